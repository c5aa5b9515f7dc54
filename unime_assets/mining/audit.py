"""How well each mining rule handles the false negatives a ground truth knows about (synthetic data).

Given, per query, which global candidates are true false negatives (a correct answer that is not the
annotated positive) and which are one-attribute hard negatives (`data.synthetic.TruthIndex`), this
counts for each rule: what its false-negative filter removes from the query's candidate list Ω
(removed per query; precision = the share of removed candidates that are false negatives; recall =
the share of Ω's false negatives it removes) and what the k negatives training reads are made of
(false-negative, hard and easy shares). Real data has no ground truth: nothing here runs then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from unime_assets.mining.filters import survivor_mask
from unime_assets.mining.rules import FILTER_STRATEGIES
from unime_assets.mining.table import MiningParams, mine_table, table_rows

AUDIT_RULES = ("unime_v2", "topk_perc_pos", "random", "top")  # the rules the ablation compares, and `top`


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def rule_audit(judge_scores: pl.DataFrame, pool: pl.DataFrame, false_neg: np.ndarray, hard: np.ndarray,
               settings: Any = None, *, rules: Sequence[str] = AUDIT_RULES, k: int | None = None,
               n_pool: int | None = None) -> list[dict]:  # fmt: skip
    """One row per rule. `false_neg` and `hard` are (n_queries, n_pool) booleans over global candidate
    ids, rows in `pool` order; `k` the negatives training reads per query (default: all mined)."""
    if false_neg.shape != hard.shape or false_neg.shape[0] != pool.height:
        raise ValueError(f"audit: truth matrices {false_neg.shape} / {hard.shape} do not match {pool.height} queries")
    base = MiningParams.from_settings(settings)
    in_pool = sum(int(false_neg[i, np.asarray(ids, dtype=np.int64)].sum())
                  for i, ids in enumerate(pool["cand_ids"].to_list()) if ids)  # fmt: skip
    out = []
    for rule in rules:
        params = MiningParams.from_settings(settings, strategy=rule)
        removed = removed_fn = 0
        if rule in FILTER_STRATEGIES:
            for i, (_, scores, pos, cand_ids, _, rsims, rpos) in enumerate(table_rows(judge_scores, pool, params)):
                if cand_ids is None or len(cand_ids) == 0:
                    continue
                drop = ~survivor_mask(params, scores, pos, retriever_sims=rsims, retriever_positive=rpos)
                removed += int(drop.sum())
                removed_fn += int(false_neg[i, cand_ids.to_numpy()[drop]].sum())
        mined = mine_table(judge_scores, pool, params, n_pool=n_pool)
        kk = k or base.k
        neg = [np.asarray(ids[:kk], dtype=np.int64) for ids in mined["neg_cand_ids"].to_list()]
        n_neg = sum(len(x) for x in neg)
        fn_neg = sum(int(false_neg[i, x].sum()) for i, x in enumerate(neg))
        hard_neg = sum(int(hard[i, x].sum()) for i, x in enumerate(neg))
        out.append({
            "rule": rule, "removed_per_query": round(removed / max(pool.height, 1), 3),
            "filter_precision": _ratio(removed_fn, removed),
            "filter_recall": _ratio(removed_fn, in_pool) if rule in FILTER_STRATEGIES else 0.0,
            "negatives_false_negative_share": _ratio(fn_neg, n_neg), "negatives_hard_share": _ratio(hard_neg, n_neg),
            "false_negatives_in_pool_per_query": round(in_pool / max(pool.height, 1), 3),
        })  # fmt: skip
    return out
