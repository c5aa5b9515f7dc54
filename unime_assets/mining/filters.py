"""What each rule's false-negative filter keeps and drops, before sampling (asset metadata, plots)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from unime_assets.mining import rules
from unime_assets.mining.rules import FILTER_STRATEGIES, as_1d_float, as_float
from unime_assets.mining.table import MiningParams, table_rows


def survivor_mask(params: MiningParams, judge_scores: Any, judge_positive: Any, *, retriever_sims: Any = None,
                  retriever_positive: Any = None) -> np.ndarray:  # fmt: skip
    """Which candidates pass `params.strategy`'s filter (before sampling): the rule `mine_query` applies."""
    p = params
    judge = as_1d_float(judge_scores, "candidate_scores")
    if p.strategy == "unime_v2":
        return rules.keep_unime_v2(judge, as_float(judge_positive, "positive_score"), p.beta)
    if p.strategy == "rank_window":
        return rules.keep_rank_window(judge.size, p.window_start, p.window_size)
    if p.strategy in ("top", "random"):
        return np.ones(judge.size, dtype=bool)
    if p.score_source == "retriever":
        if retriever_sims is None or retriever_positive is None:
            raise ValueError(f"{p.strategy} with score_source='retriever' needs retriever similarities")
        scores, pos = as_1d_float(retriever_sims, "filter_scores"), as_float(retriever_positive, "filter_positive")
    else:
        scores, pos = judge, as_float(judge_positive, "positive_score")
    if p.strategy == "topk_abs":
        return rules.keep_topk_abs(scores, p.tau)
    if p.strategy == "topk_margin_pos":
        return rules.keep_margin_pos(scores, pos, p.margin)
    return rules.keep_perc_pos(scores, pos, p.perc)


def filter_counts(judge_scores: pl.DataFrame, pool: pl.DataFrame, settings: Any = None, **overrides: Any):
    """Per query: `pair_id, n_candidates, n_survivors, n_filtered` under one strategy's filter (no sampling)."""
    params = MiningParams.from_settings(settings, **overrides)
    rows: dict[str, list] = {"pair_id": [], "n_candidates": [], "n_survivors": [], "n_filtered": []}
    for pair_id, scores, pos, _, _, rsims, rpos in table_rows(judge_scores, pool, params):
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
    for _, scores, pos, _, _, rsims, rpos in table_rows(judge_scores, pool, params):
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
