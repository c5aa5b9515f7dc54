"""Dataset catalogs: which subsets exist, their meta-task and whether they are in-distribution.

The official names are exactly the HF config names of TIGER-Lab/MMEB-train and MMEB-eval
(MMEB V1, the 36 image tasks UniME-V2 reports). The synthetic catalog of the embedded default
uses the same structure so every downstream step treats both alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetaTask = Literal["classification", "vqa", "retrieval", "grounding"]
META_TASKS: tuple[MetaTask, ...] = ("classification", "vqa", "retrieval", "grounding")


@dataclass(frozen=True)
class SubsetInfo:
    name: str
    meta_task: MetaTask
    split: Literal["IND", "OOD"]


def _infos(meta: MetaTask, ind: list[str], ood: list[str]) -> list[SubsetInfo]:
    return [SubsetInfo(n, meta, "IND") for n in ind] + [SubsetInfo(n, meta, "OOD") for n in ood]


OFFICIAL_EVAL: dict[str, SubsetInfo] = {
    s.name: s
    for s in (
        _infos(
            "classification",
            ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"],
            ["Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"],
        )
        + _infos(
            "vqa",
            ["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"],
            ["ScienceQA", "VizWiz", "GQA", "TextVQA"],
        )
        + _infos(
            "retrieval",
            ["VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA"],
            ["FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"],
        )
        + _infos("grounding", ["MSCOCO"], ["RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"])
    )
}

# MMEB-train config names (underscore spelling for ImageNet_1K); each maps to its eval subset.
OFFICIAL_TRAIN: dict[str, str] = {
    "ImageNet_1K": "ImageNet-1K",
    "N24News": "N24News",
    "HatefulMemes": "HatefulMemes",
    "VOC2007": "VOC2007",
    "SUN397": "SUN397",
    "OK-VQA": "OK-VQA",
    "A-OKVQA": "A-OKVQA",
    "DocVQA": "DocVQA",
    "InfographicsVQA": "InfographicsVQA",
    "ChartQA": "ChartQA",
    "Visual7W": "Visual7W",
    "VisDial": "VisDial",
    "CIRR": "CIRR",
    "VisualNews_t2i": "VisualNews_t2i",
    "VisualNews_i2t": "VisualNews_i2t",
    "MSCOCO_t2i": "MSCOCO_t2i",
    "MSCOCO_i2t": "MSCOCO_i2t",
    "NIGHTS": "NIGHTS",
    "WebQA": "WebQA",
    "MSCOCO": "MSCOCO",
}

# Embedded default: a few subsets per meta-task; the OOD ones have no train split.
SYNTHETIC_EVAL: dict[str, SubsetInfo] = {
    s.name: s
    for s in (
        _infos("classification", ["SynColor", "SynShape"], ["SynHue"])
        + _infos("vqa", ["SynVQA", "SynCount"], ["SynWhere"])
        + _infos("retrieval", ["SynCaps_t2i", "SynCaps_i2t"], ["SynSimilar"])
        + _infos("grounding", ["SynGround"], ["SynRefer"])
    )
}
SYNTHETIC_TRAIN: dict[str, str] = {n: n for n, s in SYNTHETIC_EVAL.items() if s.split == "IND"}

CATALOGS: dict[str, tuple[dict[str, str], dict[str, SubsetInfo]]] = {
    "mmeb": (OFFICIAL_TRAIN, OFFICIAL_EVAL),
    "synthetic": (SYNTHETIC_TRAIN, SYNTHETIC_EVAL),
}


def get_catalog(name: str) -> tuple[dict[str, str], dict[str, SubsetInfo]]:
    """(train subset -> eval subset, eval subset -> info) for catalog `mmeb` or `synthetic`."""
    if name not in CATALOGS:
        raise ValueError(f"unknown dataset catalog {name!r}; expected one of {sorted(CATALOGS)}")
    return CATALOGS[name]


def check_subsets(requested: list[str], known: dict, what: str) -> list[str]:
    """Return `requested` unchanged, or fail naming every unknown subset and the valid names."""
    unknown = [s for s in requested if s not in known]
    if unknown:
        raise ValueError(f"unknown {what} subset(s) {unknown}; valid names: {sorted(known)}")
    return list(requested)
