"""Mining whole tables: one strategy over every query of a partition, seeded per query.

`MiningParams` holds everything a strategy may read (from `MiningSettings`); `mine_table` maps the
`judge_scores` and `candidate_pool` tables of a partition to the `mined_negatives` table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from unime_assets.mining import rules


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
        if self.strategy not in rules.STRATEGIES:
            raise ValueError(f"unknown mining strategy {self.strategy!r}; expected one of {rules.STRATEGIES}")
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


def mine_query(params: MiningParams, judge_scores: Any, judge_positive: Any, *, retriever_sims: Any = None,
               retriever_positive: Any = None, seed: int | None = None) -> rules.MinedNegatives:  # fmt: skip
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
        return rules.mine_unime_v2(judge_scores, judge_positive, beta=p.beta, step=p.step, k=p.k, seed=s)
    if p.strategy == "topk_abs":
        return rules.mine_topk_abs(judge_scores, tau=p.tau, k=p.k, seed=s, **filt)
    if p.strategy == "topk_margin_pos":
        return rules.mine_topk_margin_pos(judge_scores, judge_positive, margin=p.margin, k=p.k, seed=s, **filt)
    if p.strategy == "topk_perc_pos":
        return rules.mine_topk_perc_pos(judge_scores, judge_positive, perc=p.perc, k=p.k, seed=s, **filt)
    if p.strategy == "rank_window":
        return rules.mine_rank_window(
            judge_scores, window_start=p.window_start, window_size=p.window_size, k=p.k, seed=s
        )
    if p.strategy == "top":
        return rules.mine_top(judge_scores, k=p.k, seed=s)
    return rules.mine_random(judge_scores, k=p.k, seed=s)


def query_seed(seed: int, pair_id: str) -> int:
    """Per-query seed from the pair id: the same query draws the same fallback in any partition."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{pair_id}".encode(), digest_size=8).digest(), "little")


def table_rows(judge_scores: pl.DataFrame, pool: pl.DataFrame, params: MiningParams):
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


def mine_table(judge_scores: pl.DataFrame, pool: pl.DataFrame, settings: Any = None, *, n_pool: int | None = None,
               **overrides: Any) -> pl.DataFrame:  # fmt: skip
    """Mine every query: `pair_id, neg_cand_ids, neg_scores, strategy, fallback, n_survivors, n_filtered`.

    Parameters come from `settings` (a `MiningSettings`, or anything with its field names) overridden
    by the keyword arguments; unset ones take the paper's / peers' defaults (`MiningParams`).
    `neg_cand_ids` are global candidate ids (k per query, may repeat), `neg_scores` the judge scores of
    those candidates (1.0 on fallback). Each query's random draw is seeded by (seed, pair_id), so the
    table is reproducible and a query gets the same negatives whichever partition it is mined in.
    A query whose retrieval kept no candidate at all (every pool entry was at least as similar as
    its positive) takes the fallback from the whole pool of `n_pool` candidates, its positive excluded.
    """
    params = MiningParams.from_settings(settings, **overrides)
    cols: dict[str, list] = {
        "neg_cand_ids": [],
        "neg_scores": [],
        "fallback": [],
        "n_survivors": [],
        "n_filtered": [],
    }
    for pair_id, scores, pos, cand_ids, pos_id, rsims, rpos in table_rows(judge_scores, pool, params):
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

