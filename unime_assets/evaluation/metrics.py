"""Evaluation maths, framework-free (numpy only).

MMEB V1 (mmeb.md §3): per-row Precision@1 with ties to the ground truth, aggregation per meta-task,
IND, OOD and overall (the mean over datasets). Reranking: parsing listwise answers and reordering a
top-k listwise or by pairwise P(Yes). Zero-shot sets (paper §8): Recall@k in both directions and
SugarCrepe pairwise accuracy. Scores are aggregated on whatever scale they come in (fractions or x100).
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
    "composition_accuracy",
    "pairwise_order",
    "parse_listwise_answer",
    "precision_at_1",
    "rerank_order",
    "retrieval_recall",
    "row_predictions",
    "top_k_order",
    "top_ties",
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


def top_ties(scores: Sequence[np.ndarray]) -> tuple[int, int]:
    """(rows whose top score is shared by two or more candidates, those of them where the ground
    truth is among the tied): the second count is the rows whose hit depends on the tie rule
    (argmax gives them to the GT; the official UniME-V2 scorer's unstable sort, to either). NaN
    scores never tie (they count as -inf)."""
    tied = gt_tied = 0
    for row in scores:
        s = np.asarray(row, dtype=np.float64).ravel()
        s = np.where(np.isnan(s), -np.inf, s)
        if s.size < 2 or not np.isfinite(s.max()):
            continue
        top = s == s.max()
        if top.sum() > 1:
            tied += 1
            gt_tied += bool(top[0])
    return tied, gt_tied


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


def top_k_order(scores: np.ndarray, k: int) -> list[int]:
    """Candidate indices of the k best scores, best first; equal scores keep candidate order, so a
    ground truth (index 0) tied with another candidate stays ahead of it, as with argmax."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return np.argsort(-s, kind="stable")[:k].tolist()


def pairwise_order(embed_order: Sequence[int], yes_probs: Sequence[float]) -> list[int]:
    """Candidate order after pairwise reranking: descending reranker P(Yes), ties (and NaN, last)
    keep the embedder's order. yes_probs[i] belongs to embed_order[i]."""
    if len(embed_order) != len(yes_probs):
        raise ValueError(f"{len(embed_order)} candidates but {len(yes_probs)} reranker scores")
    p = np.asarray(yes_probs, dtype=np.float64)
    p = np.where(np.isnan(p), -np.inf, p)
    return [embed_order[i] for i in np.argsort(-p, kind="stable")]


def _ranks_of_best(sims: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """Per row: how many columns score strictly above the row's best relevant column (0 = top)."""
    best = np.array([row[rel].max() for row, rel in zip(sims, relevant, strict=True)])
    return (sims > best[:, None]).sum(axis=1)


def retrieval_recall(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_image: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k of image-caption retrieval by cosine, both directions, labelled by direction.

    text_image[j] is the index of caption j's image (Flickr/COCO: 5 captions per image). Keys
    "t2i_r@k" (each caption retrieves its image among all images) and "i2t_r@k" (an image is a hit
    when any of its captions is in its top k among all captions). Ties go to the ground truth, as in
    MMEB; computed in row chunks so memory stays chunk x n.
    """
    img = np.asarray(image_emb, dtype=np.float64)
    txt = np.asarray(text_emb, dtype=np.float64)
    owner = np.asarray(text_image, dtype=np.int64)
    if len(owner) != len(txt):
        raise ValueError(f"{len(txt)} captions but {len(owner)} caption->image indices")
    if len(owner) and (owner.min() < 0 or owner.max() >= len(img)):
        raise ValueError("caption->image index out of range")
    captions_of = [np.flatnonzero(owner == i) for i in range(len(img))]
    if any(len(c) == 0 for c in captions_of):
        raise ValueError("every image needs at least one caption")
    img, txt = _unit_rows(img), _unit_rows(txt)
    t2i = np.concatenate([_ranks_of_best(txt[s : s + chunk] @ img.T, [owner[j : j + 1] for j in range(s, min(s + chunk, len(txt)))])
                          for s in range(0, len(txt), chunk)])  # fmt: skip
    i2t = np.concatenate([_ranks_of_best(img[s : s + chunk] @ txt.T, captions_of[s : s + chunk])
                          for s in range(0, len(img), chunk)])  # fmt: skip
    out = {}
    for k in ks:
        out[f"t2i_r@{k}"] = float(np.mean(t2i < k))
        out[f"i2t_r@{k}"] = float(np.mean(i2t < k))
    return out


def composition_accuracy(pos_scores: Sequence[float], neg_scores: Sequence[float]) -> float:
    """SugarCrepe: fraction of images whose positive caption scores strictly above the negative."""
    p, n = np.asarray(pos_scores, dtype=np.float64), np.asarray(neg_scores, dtype=np.float64)
    if p.shape != n.shape or p.size == 0:
        raise ValueError(f"need equal, non-empty score arrays, got {p.shape} and {n.shape}")
    return float(np.mean(p > n))
