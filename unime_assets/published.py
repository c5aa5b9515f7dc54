"""Published MMEB numbers (Precision@1 x 100) to print beside ours when the official subsets are evaluated.

Sources, as digested in /work/shared/reference (each table below names its own):
- UniME-V2 paper Table 1 (paper.md §9.1): meta-task / IND / OOD / overall of UniME-V2 and VLM2Vec.
- UniME-V2 paper Table 3 (paper.md §9.3): overall MMEB of the embedder + UniME-V2-Reranker 7B.
- UniME-V2 supplementary Table 11 (paper.md §9.7): per-dataset UniME-V2 Qwen2-VL-7B and LLaVA-OV-7B.
  The text is OCR'd: the LLaVA-OV column reproduces its published IND / OOD / overall; the 7B column
  does not (it averages to 67.2 against 68.0 reported), so its cells are shown but flagged.
- VLM2Vec per-dataset: VLM2Vec-V1 Qwen2-VL-2B / 7B re-evaluated with the VLM2Vec V2 code (mmeb.md
  §4.2, columns Q2 / Q7; repo `all_scores/v2.0.1`), and VLM2Vec LLaVA-1.6 high-res from the VLM2Vec
  paper Table 6 (mmeb.md §4.2, column P).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unime_assets.evaluation import AGGREGATE_KEYS


@dataclass(frozen=True)
class Published:
    label: str
    source: str
    aggregates: dict[str, float] = field(default_factory=dict)  # keys of evaluation.AGGREGATE_KEYS
    per_dataset: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _agg(
    cls: float, vqa: float, ret: float, grd: float, ind: float, ood: float, overall: float
) -> dict[str, float]:
    return dict(zip(AGGREGATE_KEYS, (cls, vqa, ret, grd, ind, ood, overall), strict=True))


_MMEB_ORDER = [
    "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
    "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
    "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i",
    "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO", "RefCOCO",
    "RefCOCO-Matching", "Visual7W-Pointing",
]  # fmt: skip


def _column(values: list[float]) -> dict[str, float]:
    return dict(zip(_MMEB_ORDER, values, strict=True))


# paper.md §9.7 (Supp. Table 11), in _MMEB_ORDER.
_UNIME_V2_7B = _column([
    80.3, 66.9, 65.9, 84.9, 78.9, 42.5, 53.7, 87.9, 35.0, 32.3, 59.3, 32.3, 91.2, 63.9, 56.9, 60.1, 44.5, 47.4,
    55.8, 78.4, 83.4, 64.0, 79.9, 83.5, 77.7, 73.0, 69.3, 91.5, 28.5, 68.8, 71.2, 84.4, 69.3, 88.4, 89.7, 78.7,
])  # fmt: skip
_UNIME_V2_OV = _column([
    78.8, 66.6, 65.3, 92.0, 78.7, 42.9, 48.0, 89.3, 73.1, 19.8, 71.9, 71.4, 92.6, 63.5, 55.8, 62.5, 54.0, 53.7,
    69.5, 84.5, 84.2, 65.5, 77.3, 79.2, 79.1, 75.2, 68.1, 90.6, 26.4, 71.2, 68.0, 88.2, 78.2, 94.6, 91.4, 93.8,
])  # fmt: skip
# mmeb.md §4.2 columns Q2, Q7 (VLM2Vec V2-code re-evaluation) and P (VLM2Vec paper Table 6).
_VLM2VEC_Q2 = _column([
    77.5, 73.8, 57.9, 74.3, 73.7, 35.0, 50.6, 84.7, 36.9, 21.7, 48.2, 39.7, 82.7, 47.3, 42.2, 50.9, 30.5, 38.8,
    48.1, 63.2, 75.1, 46.8, 73.4, 73.8, 73.1, 68.3, 65.8, 85.8, 13.8, 54.6, 68.4, 81.4, 65.7, 80.8, 76.6, 69.1,
])  # fmt: skip
_VLM2VEC_Q7 = _column([
    80.2, 79.5, 70.3, 80.6, 77.3, 37.2, 57.6, 74.2, 40.5, 30.2, 56.8, 47.5, 88.8, 59.0, 56.6, 52.7, 38.2, 39.6,
    54.4, 71.6, 81.6, 51.4, 80.3, 81.2, 77.5, 73.6, 67.5, 88.3, 16.8, 62.1, 66.6, 85.9, 75.4, 87.1, 84.4, 80.7,
])  # fmt: skip
_VLM2VEC_LLAVA_HR = _column([
    74.5, 80.3, 67.9, 91.5, 75.8, 44.0, 43.6, 79.8, 39.6, 14.7, 69.0, 54.4, 52.0, 30.7, 34.8, 49.8, 42.1, 43.0,
    61.2, 62.0, 80.9, 49.9, 75.4, 80.0, 75.7, 73.1, 65.5, 87.6, 16.2, 60.2, 56.5, 87.8, 80.6, 88.7, 84.0, 90.9,
])  # fmt: skip

T1 = "UniME-V2 paper Table 1 (paper.md §9.1)"
PUBLISHED: tuple[Published, ...] = (
    Published("UniME-V2 Qwen2-VL-2B", T1, _agg(62.1, 56.3, 68.0, 72.7, 67.4, 58.9, 63.6)),
    Published(
        "UniME-V2 Qwen2-VL-7B",
        f"{T1}; per dataset: Supp. Table 11 (paper.md §9.7)",
        _agg(64.0, 60.1, 73.1, 82.8, 72.0, 63.0, 68.0),
        _UNIME_V2_7B,
        "Table 11's 7B cells are OCR'd and average to 67.2, not the reported 68.0",
    ),  # fmt: skip
    Published(
        "UniME-V2 LLaVA-OV-7B",
        f"{T1}; per dataset: Supp. Table 11 (paper.md §9.7)",
        _agg(65.3, 67.6, 72.9, 90.2, 74.8, 66.7, 71.2),
        _UNIME_V2_OV,
        "Table 11's OV cells reproduce IND / OOD / overall (74.8 / 66.8 / 71.2), not every meta-task",
    ),  # fmt: skip
    Published(
        "UniME-V2 2B + UniME-V2-Reranker 7B",
        "UniME-V2 paper Table 3 (paper.md §9.3)",
        {"overall": 67.6},
        note="top-10 listwise reranking",
    ),  # fmt: skip
    Published(
        "UniME-V2 7B + UniME-V2-Reranker 7B",
        "UniME-V2 paper Table 3 (paper.md §9.3)",
        {"overall": 69.6},
        note="top-10 listwise reranking",
    ),  # fmt: skip
    Published(
        "VLM2Vec Qwen2-VL-2B",
        f"{T1}; per dataset: V2-code re-eval (mmeb.md §4.2 Q2)",
        _agg(59.0, 49.4, 65.4, 73.4, 66.0, 52.6, 60.1),
        _VLM2VEC_Q2,
        "per-dataset values are the VLM2Vec V2-code re-evaluation (overall 59.7)",
    ),  # fmt: skip
    Published(
        "VLM2Vec Qwen2-VL-7B",
        f"{T1}; per dataset: V2-code re-eval (mmeb.md §4.2 Q7)",
        _agg(62.6, 57.8, 69.9, 81.7, 72.2, 57.8, 65.8),
        _VLM2VEC_Q7,
        "per-dataset values are the VLM2Vec V2-code re-evaluation (overall 65.4)",
    ),  # fmt: skip
    Published(
        "VLM2Vec LLaVA-1.6 high-res",
        "VLM2Vec paper Table 6 (mmeb.md §4.2 P)",
        _agg(61.2, 49.9, 67.4, 86.1, 67.5, 57.1, 62.9),
        _VLM2VEC_LLAVA_HR,
    ),  # fmt: skip
)


def published_for(subsets: list[str]) -> list[Published]:
    """The published rows worth printing beside an evaluation of `subsets`: all of them when any
    official MMEB subset is among them, none for another catalog (e.g. the synthetic default)."""
    return list(PUBLISHED) if any(s in _MMEB_ORDER for s in subsets) else []
