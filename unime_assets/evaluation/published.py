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

import csv
from dataclasses import dataclass, field
from pathlib import Path

from unime_assets.evaluation.metrics import AGGREGATE_KEYS


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


def _per_dataset() -> tuple[list[str], dict[str, dict[str, float]]]:
    """The per-dataset columns of `published_per_dataset.csv` (MMEB's dataset order), by column name."""
    rows = [r for r in csv.reader((Path(__file__).parent / "published_per_dataset.csv").open()) if r[0][:1] != "#"]
    header, body = rows[0], rows[1:]
    order = [r[0] for r in body]
    return order, {c: {r[0]: float(r[i]) for r in body} for i, c in enumerate(header) if i}


# Columns: paper.md §9.7 (Supp. Table 11) for UniME-V2 7B / LLaVA-OV; mmeb.md §4.2 columns Q2, Q7
# (VLM2Vec V2-code re-evaluation) and P (VLM2Vec paper Table 6, LLaVA-1.6 high-res).
_MMEB_ORDER, _COLUMNS = _per_dataset()


T1 = "UniME-V2 paper Table 1 (paper.md §9.1)"
PUBLISHED: tuple[Published, ...] = (
    Published("UniME-V2 Qwen2-VL-2B", T1, _agg(62.1, 56.3, 68.0, 72.7, 67.4, 58.9, 63.6)),
    Published(
        "UniME-V2 Qwen2-VL-7B",
        f"{T1}; per dataset: Supp. Table 11 (paper.md §9.7)",
        _agg(64.0, 60.1, 73.1, 82.8, 72.0, 63.0, 68.0),
        _COLUMNS["unime_v2_7b"],
        "Table 11's 7B cells are OCR'd and average to 67.2, not the reported 68.0",
    ),  # fmt: skip
    Published(
        "UniME-V2 LLaVA-OV-7B",
        f"{T1}; per dataset: Supp. Table 11 (paper.md §9.7)",
        _agg(65.3, 67.6, 72.9, 90.2, 74.8, 66.7, 71.2),
        _COLUMNS["unime_v2_ov"],
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
        _COLUMNS["vlm2vec_q2"],
        "per-dataset values are the VLM2Vec V2-code re-evaluation (overall 59.7)",
    ),  # fmt: skip
    Published(
        "VLM2Vec Qwen2-VL-7B",
        f"{T1}; per dataset: V2-code re-eval (mmeb.md §4.2 Q7)",
        _agg(62.6, 57.8, 69.9, 81.7, 72.2, 57.8, 65.8),
        _COLUMNS["vlm2vec_q7"],
        "per-dataset values are the VLM2Vec V2-code re-evaluation (overall 65.4)",
    ),  # fmt: skip
    Published(
        "VLM2Vec LLaVA-1.6 high-res",
        "VLM2Vec paper Table 6 (mmeb.md §4.2 P)",
        _agg(61.2, 49.9, 67.4, 86.1, 67.5, 57.1, 62.9),
        _COLUMNS["vlm2vec_llava_hr"],
    ),  # fmt: skip
)


def published_for(subsets: list[str]) -> list[Published]:
    """The published rows worth printing beside an evaluation of `subsets`: all of them when any
    official MMEB subset is among them, none for another catalog (e.g. the synthetic default)."""
    return list(PUBLISHED) if any(s in _MMEB_ORDER for s in subsets) else []
