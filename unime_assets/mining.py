"""Hard-negative sampling: UniME-V2 (paper §4) and the peers' rules, chosen by `MiningSettings.strategy`.

Framework-free: numpy only (torch tensors and lists are accepted as inputs and converted); `mine_table`
and the count helpers take and return polars tables.

Strategies (each a pure per-query function below, `mine_table` dispatches over a whole table):

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
from typing import Any, Literal

import numpy as np
import polars as pl

__all__ = [
    "STRATEGIES",
    "MinedNegatives",
    "MiningParams",
    "filter_counts",
    "filter_rates",
    "kept_and_dropped",
    "mine_query",
    "mine_random",
    "mine_rank_window",
    "mine_table",
    "mine_top",
    "mine_topk_abs",
    "mine_topk_margin_pos",
    "mine_topk_perc_pos",
    "mine_unime_v2",
    "sample_unime_v2",
    "survivor_mask",
]

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


def _as_1d_float(x: Any, what: str) -> np.ndarray:
    # torch tensors (possibly on GPU / requiring grad) are converted without importing torch here.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    return arr


def _as_float(x: Any, what: str) -> float:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"{what} must be a scalar, got shape {arr.shape}")
    return float(arr.reshape(()))


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
    scores = _as_1d_float(candidate_scores, "candidate_scores")
    pos = _as_float(positive_score, "positive_score")
    n = scores.shape[0]
    if n == 0:
        raise ValueError("candidate_scores is empty: cannot mine negatives from no candidates")
    if int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    step, k = int(step), int(k)

    threshold = pos - beta
    # `<=` rather than `not >`: NaN scores (and everything under a NaN threshold) do not survive.
    survivors = np.flatnonzero(scores <= threshold)

    if survivors.size == 0:
        rng = np.random.default_rng(seed)
        # Without replacement when possible so the k fallback negatives are distinct.
        idx = rng.choice(n, size=k, replace=n < k).astype(np.int64)
        return MinedNegatives(idx, np.ones(k, dtype=np.float64), fallback=True, n_survivors=0, n_filtered=n)

    taken = survivors[::step][:k]
    # np.resize repeats the array cyclically in order: [A, B] -> [A, B, A, B, ...].
    idx = np.resize(taken, k).astype(np.int64)
    return MinedNegatives(
        idx,
        scores[idx].astype(np.float64),
        fallback=False,
        n_survivors=int(survivors.size),
        n_filtered=n - int(survivors.size),
    )


def sample_unime_v2(
    candidate_scores: Sequence[float] | np.ndarray | Any,
    positive_score: float | Any,
    *,
    beta: float = 0.01,
    step: int = 5,
    k: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
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
    judge = _as_1d_float(candidate_scores, "candidate_scores")
    if filter_scores is None:
        return judge, judge, None if positive is None else _as_float(positive, "positive_score")
    scores = _as_1d_float(filter_scores, "filter_scores")
    if scores.shape != judge.shape:
        raise ValueError(
            f"filter_scores has {scores.shape[0]} entries but candidate_scores has {judge.shape[0]}"
        )
    if positive is not None and filter_positive is None:
        raise ValueError("filter_scores given without filter_positive (the positive's score on their scale)")
    return judge, scores, None if filter_positive is None else _as_float(filter_positive, "filter_positive")


def mine_topk_abs(
    candidate_scores: Any, *, tau: float = 0.7, k: int = 10, seed: int = 0, filter_scores: Any = None
) -> MinedNegatives:
    """NV-Retriever TopK-Abs (arXiv 2407.15831, peers.md §3.1): keep s_i < tau, then the first k in retrieval order.

    tau = 0.7 is the absolute ceiling peers.md quotes from the paper's ablation (not re-checked against
    the paper's table). `filter_scores` (e.g. retriever similarities) replace the judge scores in the
    comparison; the returned scores are always `candidate_scores` (judge) of the chosen candidates.
    """
    judge, scores, _ = _filter_inputs(candidate_scores, filter_scores)
    survivors = np.flatnonzero(scores < tau)  # `<`: NaN never survives
    return _take(survivors, judge, k=k, seed=seed, n_filtered=judge.size - survivors.size)


def mine_topk_margin_pos(
    candidate_scores: Any,
    positive_score: Any,
    *,
    margin: float = 0.05,
    k: int = 10,
    seed: int = 0,
    filter_scores: Any = None,
    filter_positive: Any = None,
) -> MinedNegatives:
    """NV-Retriever TopK-MarginPos (peers.md §3.1, m = 0.05): keep s_i < s+ - margin, then the first k.

    sentence-transformers `absolute_margin=m`, NeMo `hard_neg_margin_type="abs"`.
    """
    judge, scores, pos = _filter_inputs(candidate_scores, filter_scores, positive_score, filter_positive)
    survivors = np.flatnonzero(scores < pos - margin)
    return _take(survivors, judge, k=k, seed=seed, n_filtered=judge.size - survivors.size)


def mine_topk_perc_pos(
    candidate_scores: Any,
    positive_score: Any,
    *,
    perc: float = 0.95,
    k: int = 10,
    seed: int = 0,
    filter_scores: Any = None,
    filter_positive: Any = None,
) -> MinedNegatives:
    """NV-Retriever TopK-PercPos (peers.md §3.1, p = 0.95, the paper's best): keep s_i < p * s+, then the first k.

    Written s+ - |s+| * (1 - p), equal to p * s+ for s+ >= 0 and still below the positive for s+ < 0
    (peers.md §3.2 pitfall (a)); sentence-transformers `relative_margin=1-p`, NeMo default
    `hard_neg_margin=0.95, "perc"`.
    """
    if not 0 < perc <= 1:
        raise ValueError(f"perc must be in (0, 1], got {perc}")
    judge, scores, pos = _filter_inputs(candidate_scores, filter_scores, positive_score, filter_positive)
    assert pos is not None
    survivors = np.flatnonzero(scores < pos - abs(pos) * (1.0 - perc))
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
    judge = _as_1d_float(candidate_scores, "candidate_scores")
    survivors = np.arange(min(window_start, judge.size), min(window_start + window_size, judge.size))
    return _take(survivors, judge, k=k, seed=seed, n_filtered=judge.size - survivors.size)


def mine_top(candidate_scores: Any, *, k: int = 10, seed: int = 0) -> MinedNegatives:
    """Naive top-k (NV-Retriever baseline): the first k candidates in retrieval order, no filter."""
    judge = _as_1d_float(candidate_scores, "candidate_scores")
    return _take(np.arange(judge.size), judge, k=k, seed=seed, n_filtered=0)


def mine_random(candidate_scores: Any, *, k: int = 10, seed: int = 0) -> MinedNegatives:
    """Sampled top-k (NV-Retriever baseline; ST `sampling_strategy="random"`): k distinct candidates at random.

    Seeded; the picks are returned in retrieval order and repeated cyclically when fewer than k exist.
    """
    judge = _as_1d_float(candidate_scores, "candidate_scores")
    if judge.size == 0:
        raise ValueError("candidate_scores is empty: cannot mine negatives from no candidates")
    picked = np.sort(
        np.random.default_rng(seed).choice(judge.size, size=min(int(k), judge.size), replace=False)
    )
    return _take(picked, judge, k=k, seed=seed, n_filtered=0, n_survivors=judge.size)


# --- parameters and whole tables ------------------------------------------------------------------


@dataclass(frozen=True)
class MiningParams:
    """Everything a strategy may read; defaults are the paper's / peers' (see the module docstring)."""

    strategy: str = "unime_v2"
    k: int = 10
    seed: int = 0
    beta: float = 0.01
    step: int = 5
    score_source: Literal["judge", "retriever"] = "judge"
    tau: float = 0.7
    margin: float = 0.05
    perc: float = 0.95
    window_start: int = 30
    window_size: int = 100

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown mining strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.score_source not in ("judge", "retriever"):
            raise ValueError(f"score_source must be 'judge' or 'retriever', got {self.score_source!r}")

    @classmethod
    def from_settings(cls, settings: Any = None, **overrides: Any) -> MiningParams:
        """From a `MiningSettings` (or any object / mapping with its field names; `n_negatives` is k)."""
        values: dict[str, Any] = {}
        if settings is not None:
            get = settings.get if isinstance(settings, dict) else lambda name: getattr(settings, name, None)
            for name in cls.__dataclass_fields__:
                v = get("n_negatives" if name == "k" else name)
                if v is not None:
                    values[name] = v
        values.update({key: v for key, v in overrides.items() if v is not None})
        return cls(**values)


def mine_query(
    params: MiningParams,
    judge_scores: Any,
    judge_positive: Any,
    *,
    retriever_sims: Any = None,
    retriever_positive: Any = None,
    seed: int | None = None,
) -> MinedNegatives:
    """Mine one query with `params.strategy`; retriever similarities are needed for score_source='retriever'."""
    p, s = params, params.seed if seed is None else seed
    filt: dict[str, Any] = {}
    if p.score_source == "retriever" and p.strategy in ("topk_abs", "topk_margin_pos", "topk_perc_pos"):
        if retriever_sims is None or retriever_positive is None:
            raise ValueError(f"{p.strategy} with score_source='retriever' needs retriever similarities")
        filt = {"filter_scores": retriever_sims}
        if p.strategy != "topk_abs":
            filt["filter_positive"] = retriever_positive
    if p.strategy == "unime_v2":  # the paper's rule is defined on judge scores only
        return mine_unime_v2(judge_scores, judge_positive, beta=p.beta, step=p.step, k=p.k, seed=s)
    if p.strategy == "topk_abs":
        return mine_topk_abs(judge_scores, tau=p.tau, k=p.k, seed=s, **filt)
    if p.strategy == "topk_margin_pos":
        return mine_topk_margin_pos(judge_scores, judge_positive, margin=p.margin, k=p.k, seed=s, **filt)
    if p.strategy == "topk_perc_pos":
        return mine_topk_perc_pos(judge_scores, judge_positive, perc=p.perc, k=p.k, seed=s, **filt)
    if p.strategy == "rank_window":
        return mine_rank_window(
            judge_scores, window_start=p.window_start, window_size=p.window_size, k=p.k, seed=s
        )
    if p.strategy == "top":
        return mine_top(judge_scores, k=p.k, seed=s)
    return mine_random(judge_scores, k=p.k, seed=s)


def query_seed(seed: int, pair_id: str) -> int:
    """Per-query seed from the pair id: the same query draws the same fallback in any partition."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{pair_id}".encode(), digest_size=8).digest(), "little")


def _rows(judge_scores: pl.DataFrame, pool: pl.DataFrame, params: MiningParams):
    if judge_scores["pair_id"].to_list() != pool["pair_id"].to_list():
        raise ValueError(
            "mining: judge_scores rows do not match candidate_pool rows (re-materialize judge_scores)"
        )
    use_retriever = params.score_source == "retriever"
    sims = pool["cand_sims"] if use_retriever else [None] * pool.height
    pos_sims = pool["pos_sim"] if use_retriever else [None] * pool.height
    for pair_id, scores, pos, cand_ids, pos_id, rs, rp in zip(
        judge_scores["pair_id"], judge_scores["cand_scores"], judge_scores["pos_score"], pool["cand_ids"],
        pool["pos_cand_id"], sims, pos_sims, strict=True,
    ):  # fmt: skip
        scores_np = scores.to_numpy() if scores is not None else np.empty(0)
        if cand_ids is not None and len(scores_np) != len(cand_ids):
            raise ValueError(
                f"mining: query {pair_id} has {len(scores_np)} judge scores for {len(cand_ids)} candidates"
            )
        yield pair_id, scores_np, pos, cand_ids, pos_id, (None if rs is None else rs.to_numpy()), rp


def mine_table(
    judge_scores: pl.DataFrame,
    pool: pl.DataFrame,
    settings: Any = None,
    *,
    strategy: str | None = None,
    k: int | None = None,
    seed: int | None = None,
    beta: float | None = None,
    step: int | None = None,
    score_source: str | None = None,
    tau: float | None = None,
    margin: float | None = None,
    perc: float | None = None,
    window_start: int | None = None,
    window_size: int | None = None,
    n_pool: int | None = None,
) -> pl.DataFrame:
    """Mine every query: `pair_id, neg_cand_ids, neg_scores, strategy, fallback, n_survivors, n_filtered`.

    Parameters come from `settings` (a `MiningSettings`, or anything with its field names) overridden
    by the keyword arguments; unset ones take the paper's / peers' defaults (`MiningParams`).
    `neg_cand_ids` are global candidate ids (k per query, may repeat), `neg_scores` the judge scores of
    those candidates (1.0 on fallback). Each query's random draw is seeded by (seed, pair_id), so the
    table is reproducible and a query gets the same negatives whichever partition it is mined in.
    A query whose retrieval kept no candidate at all (every pool entry was at least as similar as
    its positive) takes the fallback from the whole pool of `n_pool` candidates, its positive excluded.
    """
    params = MiningParams.from_settings(
        settings, strategy=strategy, k=k, seed=seed, beta=beta, step=step, score_source=score_source, tau=tau,
        margin=margin, perc=perc, window_start=window_start, window_size=window_size,
    )  # fmt: skip
    cols: dict[str, list] = {
        "neg_cand_ids": [],
        "neg_scores": [],
        "fallback": [],
        "n_survivors": [],
        "n_filtered": [],
    }
    for pair_id, scores, pos, cand_ids, pos_id, rsims, rpos in _rows(judge_scores, pool, params):
        qseed = query_seed(params.seed, pair_id)
        if cand_ids is None or len(cand_ids) == 0:
            if not n_pool or n_pool < 2:
                raise ValueError(f"mining: query {pair_id} has no retrieved candidates")
            others = np.delete(np.arange(n_pool), pos_id)
            picked = np.random.default_rng(qseed).choice(
                others, size=params.k, replace=len(others) < params.k
            )
            neg_ids, neg_scores, fb, n_surv, n_filt = picked.tolist(), [1.0] * params.k, True, 0, 0
        else:
            mined = mine_query(params, scores, pos, retriever_sims=rsims, retriever_positive=rpos, seed=qseed)
            ids = cand_ids.to_numpy().astype(np.int64)
            neg_ids, neg_scores = ids[mined.indices].tolist(), mined.scores.tolist()
            fb, n_surv, n_filt = mined.fallback, mined.n_survivors, mined.n_filtered
        for name, v in zip(cols, (neg_ids, neg_scores, fb, n_surv, n_filt), strict=True):
            cols[name].append(v)
    return pl.DataFrame(
        {
            "pair_id": judge_scores["pair_id"],
            "neg_cand_ids": cols["neg_cand_ids"],
            "neg_scores": cols["neg_scores"],
            "strategy": [params.strategy] * judge_scores.height,
            "fallback": cols["fallback"],
            "n_survivors": cols["n_survivors"],
            "n_filtered": cols["n_filtered"],
        },
        schema_overrides={
            "neg_cand_ids": pl.List(pl.Int64),
            "neg_scores": pl.List(pl.Float64),
            "strategy": pl.String,
            "fallback": pl.Boolean,
            "n_survivors": pl.Int64,
            "n_filtered": pl.Int64,
        },
    )


def survivor_mask(
    params: MiningParams,
    judge_scores: Any,
    judge_positive: Any,
    *,
    retriever_sims: Any = None,
    retriever_positive: Any = None,
) -> np.ndarray:
    """Which candidates pass `params.strategy`'s filter (before sampling); the same rule as `mine_query`."""
    p = params
    judge = _as_1d_float(judge_scores, "candidate_scores")
    n = judge.size
    if p.strategy == "unime_v2":
        return judge <= _as_float(judge_positive, "positive_score") - p.beta
    if p.strategy == "rank_window":
        mask = np.zeros(n, dtype=bool)
        mask[p.window_start : p.window_start + p.window_size] = True
        return mask
    if p.strategy in ("top", "random"):
        return np.ones(n, dtype=bool)
    if p.score_source == "retriever":
        if retriever_sims is None or retriever_positive is None:
            raise ValueError(f"{p.strategy} with score_source='retriever' needs retriever similarities")
        scores, pos = (
            _as_1d_float(retriever_sims, "filter_scores"),
            _as_float(retriever_positive, "filter_positive"),
        )
    else:
        scores, pos = judge, _as_float(judge_positive, "positive_score")
    if p.strategy == "topk_abs":
        return scores < p.tau
    if p.strategy == "topk_margin_pos":
        return scores < pos - p.margin
    return scores < pos - abs(pos) * (1.0 - p.perc)


def filter_counts(judge_scores: pl.DataFrame, pool: pl.DataFrame, settings: Any = None, **overrides: Any):
    """Per query: `pair_id, n_candidates, n_survivors, n_filtered` under one strategy's filter (no sampling)."""
    params = MiningParams.from_settings(settings, **overrides)
    rows: dict[str, list] = {"pair_id": [], "n_candidates": [], "n_survivors": [], "n_filtered": []}
    for pair_id, scores, pos, _, _, rsims, rpos in _rows(judge_scores, pool, params):
        n = len(scores)
        kept = int(survivor_mask(params, scores, pos, retriever_sims=rsims, retriever_positive=rpos).sum())
        for name, v in zip(rows, (pair_id, n, kept, n - kept), strict=True):
            rows[name].append(v)
    return pl.DataFrame(rows, schema={"pair_id": pl.String, "n_candidates": pl.Int64, "n_survivors": pl.Int64,
                                      "n_filtered": pl.Int64})  # fmt: skip


def kept_and_dropped(
    judge_scores: pl.DataFrame, pool: pl.DataFrame, settings: Any = None, **overrides: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Judge scores of all candidates the strategy's filter keeps, and of those it drops (for histograms)."""
    params = MiningParams.from_settings(settings, **overrides)
    kept: list[np.ndarray] = [np.empty(0)]
    dropped: list[np.ndarray] = [np.empty(0)]
    for _, scores, pos, _, _, rsims, rpos in _rows(judge_scores, pool, params):
        mask = survivor_mask(params, scores, pos, retriever_sims=rsims, retriever_positive=rpos)
        kept.append(scores[mask])
        dropped.append(scores[~mask])
    return np.concatenate(kept), np.concatenate(dropped)


def filter_rates(
    judge_scores: pl.DataFrame,
    pool: pl.DataFrame,
    settings: Any = None,
    strategies: Sequence[str] = FILTER_STRATEGIES,
    **overrides: Any,
) -> dict[str, float]:
    """Fraction of all retrieved candidates each strategy's filter drops (the false-negative filter rate)."""
    out = {}
    for name in strategies:
        counts = filter_counts(judge_scores, pool, settings, **{**overrides, "strategy": name})
        total = int(counts["n_candidates"].sum())
        out[name] = float(counts["n_filtered"].sum() / total) if total else 0.0
    return out
