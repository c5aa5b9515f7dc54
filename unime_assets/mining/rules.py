"""Hard-negative sampling rules, one pure function per query: UniME-V2 (paper §4) and the peers'.

Framework-free: numpy only (torch tensors and lists are accepted as inputs and converted); whole
tables are mined by `mining/table.py`, the rule is chosen by `MiningSettings.strategy`.

Strategies (each a pure per-query function below; `mining.table.mine_table` dispatches over a table):

| strategy          | keeps the candidate at rank i (retrieval order) if | then takes          | source                      |
|-------------------|----------------------------------------------------|---------------------|-----------------------------|
| `unime_v2`        | judge s_i <= s+ - beta (beta 0.01)                 | every `step`-th (5) | UniME-V2 paper §4           |
| `topk_abs`        | s_i < tau (0.7)                                    | first k             | NV-Retriever TopK-Abs       |
| `topk_margin_pos` | s_i < s+ - margin (0.05)                           | first k             | NV-Retriever TopK-MarginPos |
| `topk_perc_pos`   | s_i < s+ - abs(s+) * (1 - perc) (perc 0.95)        | first k             | NV-Retriever TopK-PercPos   |
| `rank_window`     | window_start <= i < window_start + window_size     | first k             | B3 rank window (30, 100)    |
| `top`             | always                                             | first k             | naive top-k                 |
| `random`          | always                                             | k at random, seeded | sampled top-k               |

The NV-Retriever rules (Moreira et al., arXiv 2407.15831; peers.md §3.1) filter on judge scores or on
retriever similarities (`score_source`); the returned scores are always the judge scores of the chosen
candidates, since the training loss aligns with the judge. `topk_perc_pos` is written
s+ - abs(s+)(1 - perc) rather than perc * s+ so that a negative s+ (a cosine) still means "below the
positive" (sentence-transformers' fix of the same sign bug, peers.md §3.2 pitfall (a)); for s+ >= 0 the
two agree. Every strategy returns exactly k negatives: when fewer than k are taken they are repeated
cyclically in retrieval order (A, B, A, B, ...), and when none survives, k random candidates of the
query's list are taken with score 1.0 and `fallback` set, as UniME-V2 does (below).

The UniME-V2 rule in detail:

Rule, per query, over the top-K candidates in *retrieval order* with their judge scores:

1. threshold = positive_score - beta; a candidate with score > threshold is a likely false negative and
   is dropped (score == threshold survives).
2. From the survivors, still in retrieval order, take every `step`-th one starting at the first
   (positions 0, step, 2*step, ...) until `k` are taken.
3. If fewer than `k` were taken, repeat them cyclically in the same order (A, B, A, B, ...); this matches
   the released judge-score JSON (paper digest §4 point 3).
4. If no candidate survives, pick `k` random candidates out of all of them and give each the score 1.0
   (the paper's fallback; < 1 % of queries).

NaN handling: a NaN candidate score never survives the filter (NaN > threshold and NaN <= threshold are
both False in IEEE arithmetic, so we test survival as `score <= threshold`, which drops NaN). A NaN
positive score makes the threshold NaN, so nothing survives and the query takes the fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STRATEGIES: tuple[str, ...] = (
    "unime_v2",
    "topk_abs",
    "topk_margin_pos",
    "topk_perc_pos",
    "rank_window",
    "top",
    "random",
)
# Strategies that drop likely false negatives by score (their drop rate is reported per strategy).
FILTER_STRATEGIES: tuple[str, ...] = ("unime_v2", "topk_abs", "topk_margin_pos", "topk_perc_pos")


# eq=False: element-wise array comparison would make == ambiguous.
@dataclass(frozen=True, eq=False)
class MinedNegatives:
    """Result of mining one query.

    indices: int64 (k,), positions into the candidate list (retrieval order), may repeat.
    scores: float64 (k,), the judge scores of those candidates (all 1.0 on fallback).
    fallback: True when no candidate survived the false-negative filter (random pick, scores 1.0).
    n_survivors: how many candidates passed the filter (before step sampling).
    n_filtered: how many candidates the filter removed (false negatives, or ranks outside the window).
    """

    indices: np.ndarray
    scores: np.ndarray
    fallback: bool
    n_survivors: int
    n_filtered: int = 0


def as_1d_float(x: Any, what: str) -> np.ndarray:
    # torch tensors (possibly on GPU / requiring grad) are converted without importing torch here.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    return arr


def as_float(x: Any, what: str) -> float:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"{what} must be a scalar, got shape {arr.shape}")
    return float(arr.reshape(()))


# --- each rule's filter, defined once (the miners below and `mining.filters` both use these) ---------


def keep_unime_v2(judge: np.ndarray, positive: float, beta: float) -> np.ndarray:
    # `<=` rather than `not >`: NaN scores (and everything under a NaN threshold) do not survive.
    return judge <= positive - beta


def keep_topk_abs(scores: np.ndarray, tau: float) -> np.ndarray:
    return scores < tau  # `<`: NaN never survives


def keep_margin_pos(scores: np.ndarray, positive: float, margin: float) -> np.ndarray:
    return scores < positive - margin


def keep_perc_pos(scores: np.ndarray, positive: float, perc: float) -> np.ndarray:
    return scores < positive - abs(positive) * (1.0 - perc)


def keep_rank_window(n: int, window_start: int, window_size: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[window_start : window_start + window_size] = True
    return mask


def mine_unime_v2(
    candidate_scores: Sequence[float] | np.ndarray | Any,
    positive_score: float | Any,
    *,
    beta: float = 0.01,
    step: int = 5,
    k: int = 10,
    seed: int = 0,
) -> MinedNegatives:
    """Mine `k` hard negatives for one query; see the module docstring for the rule.

    candidate_scores: judge scores of the candidates in retrieval order (list, numpy or torch, 1-D).
    positive_score: judge score of the (query, positive) pair.
    seed: seeds np.random.default_rng for the no-survivor fallback only.
    """
    scores = as_1d_float(candidate_scores, "candidate_scores")
    pos = as_float(positive_score, "positive_score")
    n = scores.shape[0]
    if n == 0:
        raise ValueError("candidate_scores is empty: cannot mine negatives from no candidates")
    if int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    survivors = np.flatnonzero(keep_unime_v2(scores, pos, beta))
    return _take(survivors, scores, k=int(k), seed=seed, n_filtered=n - survivors.size, step=int(step))


def sample_unime_v2(candidate_scores: Sequence[float] | np.ndarray | Any, positive_score: float | Any, *,
                    beta: float = 0.01, step: int = 5, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(indices int64 (k,), scores float64 (k,)) of the mined negatives; thin wrapper of `mine_unime_v2`."""
    mined = mine_unime_v2(candidate_scores, positive_score, beta=beta, step=step, k=k, seed=seed)
    return mined.indices, mined.scores


def _take(
    survivors: np.ndarray,
    judge: np.ndarray,
    *,
    k: int,
    seed: int,
    n_filtered: int,
    step: int = 1,
    n_survivors: int | None = None,
) -> MinedNegatives:
    """Every `step`-th survivor up to k, cyclic repeat when short, random with score 1.0 when none."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n = judge.shape[0]
    if n == 0:
        raise ValueError("candidate_scores is empty: cannot mine negatives from no candidates")
    if survivors.size == 0:
        rng = np.random.default_rng(seed)
        idx = rng.choice(n, size=k, replace=n < k).astype(np.int64)
        return MinedNegatives(
            idx, np.ones(k, dtype=np.float64), fallback=True, n_survivors=0, n_filtered=n_filtered
        )
    idx = np.resize(survivors[::step][:k], k).astype(np.int64)
    return MinedNegatives(
        idx,
        judge[idx].astype(np.float64),
        fallback=False,
        n_survivors=int(survivors.size) if n_survivors is None else n_survivors,
        n_filtered=n_filtered,
    )


def _filter_inputs(
    candidate_scores: Any, filter_scores: Any, positive: Any = None, filter_positive: Any = None
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(judge scores, scores the rule compares, positive score on the same scale)."""
    judge = as_1d_float(candidate_scores, "candidate_scores")
    if filter_scores is None:
        return judge, judge, None if positive is None else as_float(positive, "positive_score")
    scores = as_1d_float(filter_scores, "filter_scores")
    if scores.shape != judge.shape:
        raise ValueError(
            f"filter_scores has {scores.shape[0]} entries but candidate_scores has {judge.shape[0]}"
        )
    if positive is not None and filter_positive is None:
        raise ValueError("filter_scores given without filter_positive (the positive's score on their scale)")
    return judge, scores, None if filter_positive is None else as_float(filter_positive, "filter_positive")


def mine_topk_abs(
    candidate_scores: Any, *, tau: float = 0.7, k: int = 10, seed: int = 0, filter_scores: Any = None
) -> MinedNegatives:
    """NV-Retriever TopK-Abs (arXiv 2407.15831, peers.md §3.1): keep s_i < tau, then the first k in retrieval order.

    tau = 0.7 is the absolute ceiling peers.md quotes from the paper's ablation (not re-checked against
    the paper's table). `filter_scores` (e.g. retriever similarities) replace the judge scores in the
    comparison; the returned scores are always `candidate_scores` (judge) of the chosen candidates.
    """
    judge, scores, _ = _filter_inputs(candidate_scores, filter_scores)
    survivors = np.flatnonzero(keep_topk_abs(scores, tau))
    return _take(survivors, judge, k=k, seed=seed, n_filtered=judge.size - survivors.size)


def mine_topk_margin_pos(candidate_scores: Any, positive_score: Any, *, margin: float = 0.05, k: int = 10, seed: int = 0,
                         filter_scores: Any = None, filter_positive: Any = None) -> MinedNegatives:
    """NV-Retriever TopK-MarginPos (peers.md §3.1, m = 0.05): keep s_i < s+ - margin, then the first k.

    sentence-transformers `absolute_margin=m`, NeMo `hard_neg_margin_type="abs"`.
    """
    judge, scores, pos = _filter_inputs(candidate_scores, filter_scores, positive_score, filter_positive)
    survivors = np.flatnonzero(keep_margin_pos(scores, pos, margin))
    return _take(survivors, judge, k=k, seed=seed, n_filtered=judge.size - survivors.size)


def mine_topk_perc_pos(candidate_scores: Any, positive_score: Any, *, perc: float = 0.95, k: int = 10, seed: int = 0,
                       filter_scores: Any = None, filter_positive: Any = None) -> MinedNegatives:
    """NV-Retriever TopK-PercPos (peers.md §3.1, p = 0.95, the paper's best): keep s_i < p * s+, then the first k.

    Written s+ - |s+| * (1 - p), equal to p * s+ for s+ >= 0 and still below the positive for s+ < 0
    (peers.md §3.2 pitfall (a)); sentence-transformers `relative_margin=1-p`, NeMo default
    `hard_neg_margin=0.95, "perc"`.
    """
    if not 0 < perc <= 1:
        raise ValueError(f"perc must be in (0, 1], got {perc}")
    judge, scores, pos = _filter_inputs(candidate_scores, filter_scores, positive_score, filter_positive)
    assert pos is not None
    survivors = np.flatnonzero(keep_perc_pos(scores, pos, perc))
    return _take(survivors, judge, k=k, seed=seed, n_filtered=judge.size - survivors.size)


def mine_rank_window(
    candidate_scores: Any, *, window_start: int = 30, window_size: int = 100, k: int = 10, seed: int = 0
) -> MinedNegatives:
    """B3-style rank window (peers.md §1a, B3 p = 30, m = 100): ranks window_start .. window_start+window_size-1.

    Ranks are positions in the δ-filtered retrieval list, so with the paper's 50 candidates the default
    window is ranks 30..49; the first k of the window are taken (NV-Retriever's "Top-K shifted by N").
    A list no longer than `window_start` has no survivor and takes the random fallback.
    """
    if window_start < 0 or window_size < 1:
        raise ValueError(f"window_start must be >= 0 and window_size >= 1, got {window_start}, {window_size}")
    judge = as_1d_float(candidate_scores, "candidate_scores")
    survivors = np.flatnonzero(keep_rank_window(judge.size, window_start, window_size))
    return _take(survivors, judge, k=k, seed=seed, n_filtered=judge.size - survivors.size)


def mine_top(candidate_scores: Any, *, k: int = 10, seed: int = 0) -> MinedNegatives:
    """Naive top-k (NV-Retriever baseline): the first k candidates in retrieval order, no filter."""
    judge = as_1d_float(candidate_scores, "candidate_scores")
    return _take(np.arange(judge.size), judge, k=k, seed=seed, n_filtered=0)


def mine_random(candidate_scores: Any, *, k: int = 10, seed: int = 0) -> MinedNegatives:
    """Sampled top-k (NV-Retriever baseline; ST `sampling_strategy="random"`): k distinct candidates at random.

    Seeded; the picks are returned in retrieval order and repeated cyclically when fewer than k exist.
    """
    judge = as_1d_float(candidate_scores, "candidate_scores")
    if judge.size == 0:
        raise ValueError("candidate_scores is empty: cannot mine negatives from no candidates")
    picked = np.sort(
        np.random.default_rng(seed).choice(judge.size, size=min(int(k), judge.size), replace=False)
    )
    return _take(picked, judge, k=k, seed=seed, n_filtered=0, n_survivors=judge.size)
