"""The rule audit against a ground truth: what each filter removed, its precision and recall, and what
the trained negatives are made of, checked on a hand-made pool."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from unime_assets.mining import rule_audit
from unime_assets.retrieval import delta_rule_audit


def _tables():
    # query a: candidates 1..5 in retrieval order; the judge scores 1 and 3 above the positive (0.8)
    pool = pl.DataFrame({"pair_id": ["a"], "pos_cand_id": [0], "cand_ids": [[1, 2, 3, 4, 5]],
                         "cand_sims": [[0.9, 0.8, 0.7, 0.6, 0.5]], "pos_sim": [0.95]},
                        schema_overrides={"cand_sims": pl.List(pl.Float32), "pos_sim": pl.Float32})  # fmt: skip
    scores = pl.DataFrame({"pair_id": ["a"], "pos_score": [0.8], "cand_scores": [[0.9, 0.1, 0.85, 0.2, 0.3]]})
    false_neg = np.zeros((1, 6), dtype=bool)
    false_neg[0, [1, 4]] = True  # true false negatives: 1 (caught by the filter) and 4 (missed)
    hard = np.zeros((1, 6), dtype=bool)
    hard[0, 2] = True
    return scores, pool, false_neg, hard


def test_filter_precision_recall_and_negative_shares():
    scores, pool, fn, hard = _tables()
    rows = {r["rule"]: r for r in rule_audit(scores, pool, fn, hard, {"n_negatives": 2, "step": 1},
                                             rules=("unime_v2", "top", "random"), n_pool=6)}  # fmt: skip
    u = rows["unime_v2"]  # removes 1 and 3 (> 0.8 - 0.01): one of them is a false negative
    assert u["removed_per_query"] == 2 and u["filter_precision"] == 0.5 and u["filter_recall"] == 0.5
    assert u["false_negatives_in_pool_per_query"] == 2
    # survivors 2, 4, 5 in order, step 1, k 2: negatives 2 (hard) and 4 (a false negative)
    assert u["negatives_false_negative_share"] == 0.5 and u["negatives_hard_share"] == 0.5
    t = rows["top"]  # no filter: negatives 1 (false negative) and 2 (hard)
    assert t["removed_per_query"] == 0 and t["filter_precision"] is None and t["filter_recall"] == 0.0
    assert t["negatives_false_negative_share"] == 0.5 and t["negatives_hard_share"] == 0.5
    with pytest.raises(ValueError, match="truth matrices"):
        rule_audit(scores, pool, fn[:, :3], hard, rules=("top",))


def test_delta_rule_audit_counts_what_is_at_least_as_similar_as_the_positive():
    q = np.array([[1.0, 0.0]])
    c = np.array([[0.9, 0.1], [1.0, 0.0], [0.5, 0.5], [0.99, 0.0]])  # row 0 is the positive
    fn = np.array([[False, True, True, False]])
    out = delta_rule_audit(q, c, np.array([0]), fn)
    # removed: rows 1 (sim 1.0) and 3 (0.99) are >= the positive's 0.9; row 1 is a false negative
    assert out == {"false_negatives_per_query": 2.0, "delta_removed_per_query": 2.0, "delta_precision": 0.5,
                   "delta_recall": 0.5}  # fmt: skip
