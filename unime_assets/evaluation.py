"""MMEB V1 evaluation maths (mmeb.md §3): per-row Precision@1, score aggregation, listwise reranking.

Framework-free: numpy only. Scores are aggregated on whatever scale they come in (fractions or x100).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from unime_assets.data.catalog import META_TASKS, OFFICIAL_EVAL, SubsetInfo

__all__ = [
    "AGGREGATE_KEYS",
    "aggregate",
    "aggregate_mmeb",
    "parse_listwise_answer",
    "precision_at_1",
    "rerank_order",
    "row_predictions",
]

AGGREGATE_KEYS: tuple[str, ...] = (*META_TASKS, "ind", "ood", "overall")

_ANSWER_RE = re.compile(r"\((\d+)\)")


def precision_at_1(scores: Sequence[np.ndarray]) -> float:
    """Fraction of rows whose ground truth (index 0) has the highest score.

    np.argmax returns the first maximum, so an exact tie with the GT counts as a hit (MMEB V1 behaviour).
    A NaN candidate score can never win (treated as -inf); a NaN GT score is a miss.
    """
    if len(scores) == 0:
        raise ValueError("precision_at_1 needs at least one query row")
    hits = 0
    for i, row in enumerate(scores):
        s = np.asarray(row, dtype=np.float64).ravel()
        if s.size == 0:
            raise ValueError(f"row {i} has no candidates")
        if np.isnan(s[0]):
            continue
        # Plain argmax would pick the first NaN; mask NaNs so they lose instead.
        hits += int(np.argmax(np.where(np.isnan(s), -np.inf, s)) == 0)
    return hits / len(scores)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    # Zero vectors stay zero (cosine 0) instead of dividing by zero.
    return x / np.maximum(norms, 1e-12)


def row_predictions(query_emb: np.ndarray, cand_embs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Cosine score of each query against its own row of candidates.

    query_emb: (N, D); cand_embs: N arrays of shape (C_i, D), GT first. Returns N float64 arrays (C_i,).
    Inputs are re-normalised defensively and computed in float64 with a per-row elementwise reduction,
    so identical candidate embeddings (e.g. a duplicated GT) get bit-identical scores and tie.
    """
    q = np.asarray(query_emb, dtype=np.float64)
    if q.ndim != 2:
        raise ValueError(f"query_emb must be (N, D), got shape {q.shape}")
    if len(cand_embs) != q.shape[0]:
        raise ValueError(f"{q.shape[0]} queries but {len(cand_embs)} candidate rows")
    q = _unit_rows(q)
    out: list[np.ndarray] = []
    for i, cands in enumerate(cand_embs):
        c = np.asarray(cands, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != q.shape[1]:
            raise ValueError(f"row {i}: candidates must be (C, {q.shape[1]}), got shape {c.shape}")
        out.append((_unit_rows(c) * q[i]).sum(axis=1))
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def aggregate(per_dataset: Mapping[str, float], catalog: Mapping[str, SubsetInfo]) -> dict[str, float]:
    """Meta-task / IND / OOD / overall scores as unweighted means over the datasets present.

    Keys: classification, vqa, retrieval, grounding, ind, ood, overall. `overall` is the mean over all
    datasets (MMEB convention), NOT the mean of the meta-task means. A group with no dataset -> NaN.
    """
    unknown = sorted(set(per_dataset) - set(catalog))
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; not in the catalog ({len(catalog)} names)")
    groups: dict[str, list[float]] = {key: [] for key in AGGREGATE_KEYS}
    for name, value in per_dataset.items():
        info = catalog[name]
        v = float(value)
        groups[info.meta_task].append(v)
        groups[info.split.lower()].append(v)
        groups["overall"].append(v)
    return {key: _mean(vals) for key, vals in groups.items()}


def aggregate_mmeb(per_dataset: Mapping[str, float], *, allow_partial: bool = False) -> dict[str, float]:
    """`aggregate` over the 36 official MMEB V1 datasets; all 36 are required unless allow_partial."""
    missing = [name for name in OFFICIAL_EVAL if name not in per_dataset]
    if missing and not allow_partial:
        raise ValueError(f"missing {len(missing)} of {len(OFFICIAL_EVAL)} MMEB datasets: {missing}")
    return aggregate(per_dataset, OFFICIAL_EVAL)


def parse_listwise_answer(text: str, n: int) -> int | None:
    """0-based candidate index from a listwise reranker answer such as "Ans: (3)".

    Only the first "(digits)" counts (as in the official eval); it must lie in 1..n, else None.
    """
    m = _ANSWER_RE.search(text)
    if m is None:
        return None
    value = int(m.group(1))
    return value - 1 if 1 <= value <= n else None


def rerank_order(embed_order: Sequence[int], chosen: int | None) -> list[int]:
    """Candidate order after listwise reranking.

    embed_order: candidate ids in embedder ranking order (the list shown to the reranker).
    chosen: 0-based *position* in embed_order (what parse_listwise_answer returns), or None.
    The chosen candidate goes first, the rest keep their embedder order; None keeps the embedder order.
    """
    order = list(embed_order)
    if chosen is None:
        return order
    if not 0 <= chosen < len(order):
        raise ValueError(f"chosen position {chosen} outside 0..{len(order) - 1}")
    return [order[chosen], *order[:chosen], *order[chosen + 1 :]]
