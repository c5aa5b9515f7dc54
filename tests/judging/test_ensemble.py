"""Judge ensembles: every combination rule and the agreement numbers on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from unime_assets.judging.ensemble import (
    RULES,
    agreement,
    align_tables,
    combine,
    filter_disagreement,
    pairwise_correlations,
    reliability_weights,
    to_table,
)

# Two judges, two queries: [positive, *candidates]; the second query has one candidate only.
A = [np.array([0.9, 0.2, 0.6]), np.array([0.2, 0.8])]
B = [np.array([0.7, 0.4, 0.2]), np.array([0.8, 0.2])]


def _rows(**judges):
    return {name: [np.asarray(r, dtype=np.float64) for r in rows] for name, rows in judges.items()}


def test_mean_prob_is_the_mean_of_the_probabilities():
    out = combine(_rows(a=A, b=B), "mean_prob")
    np.testing.assert_allclose(out[0], [0.8, 0.3, 0.4])
    np.testing.assert_allclose(out[1], [0.5, 0.5])


def test_mean_logit_is_the_sigmoid_of_the_mean_logit():
    # logit(0.9) = ln 9 and logit(0.5) = 0: the mean logit is ln 3, so the score is 3 / (1 + 3)
    out = combine(_rows(a=[[0.9, 0.2]], b=[[0.5, 0.8]]), "mean_logit")
    np.testing.assert_allclose(out[0], [0.75, 0.5])  # -ln 4 and ln 4 cancel
    # a judge's 0 or 1 is clipped to float32's resolution instead of giving an infinite logit
    edge = combine(_rows(a=[[1.0, 0.0]], b=[[0.5, 0.5]]), "mean_logit")[0]
    np.testing.assert_allclose(edge, [1 / (1 + math.sqrt(1e-7 / (1 - 1e-7))), 1 / (1 + math.sqrt((1 - 1e-7) / 1e-7))])


def test_rank_mean_averages_per_query_unit_ranks_with_ties_sharing_their_rank():
    # a: ranks 3, 1, 2 -> 1, 0, 0.5; b: ranks 3, 2, 1 -> 1, 0.5, 0
    out = combine(_rows(a=A, b=B), "rank_mean")
    np.testing.assert_allclose(out[0], [1.0, 0.25, 0.25])
    np.testing.assert_allclose(out[1], [0.5, 0.5])  # a: 0, 1; b: 1, 0
    tied = combine(_rows(c=[[0.5, 0.5, 0.1]]), "rank_mean")[0]
    np.testing.assert_allclose(tied, [0.75, 0.75, 0.0])  # ranks 2.5, 2.5, 1 of 3
    np.testing.assert_allclose(combine(_rows(c=[[0.3]]), "rank_mean")[0], [0.5])  # a lone entry


def test_auc_weighted_weights_each_judge_by_its_distance_from_chance():
    assert reliability_weights({"a": 0.9, "b": 0.6}) == pytest.approx({"a": 0.8, "b": 0.2})
    out = combine(_rows(a=A, b=B), "auc_weighted", {"a": 0.9, "b": 0.6})
    np.testing.assert_allclose(out[0], [0.86, 0.24, 0.52])
    np.testing.assert_allclose(out[1], [0.32, 0.68])
    # a judge below chance gets no weight: the ensemble is the other judge
    np.testing.assert_allclose(combine(_rows(a=A, b=B), "auc_weighted", {"a": 0.45, "b": 0.7})[0], B[0])
    with pytest.raises(ValueError, match="at or below chance"):
        combine(_rows(a=A, b=B), "auc_weighted", {"a": 0.5, "b": 0.4})
    with pytest.raises(ValueError, match=r"no held-out AUC for judge\(s\) \['b'\]"):
        combine(_rows(a=A, b=B), "auc_weighted", {"a": 0.9})


def test_every_rule_keeps_scores_in_the_unit_interval_and_one_judge_unchanged_by_means():
    rng = np.random.default_rng(0)
    rows = _rows(a=[rng.random(6) for _ in range(5)], b=[rng.random(6) for _ in range(5)])
    for rule in RULES:
        out = combine(rows, rule, {"a": 0.8, "b": 0.7})
        assert all(((r >= 0) & (r <= 1)).all() and len(r) == 6 for r in out), rule
    for rule in ("mean_prob", "mean_logit", "auc_weighted"):
        out = combine({"a": rows["a"]}, rule, {"a": 0.8})
        np.testing.assert_allclose(np.concatenate(out), np.concatenate(rows["a"]), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        combine(rows, "median")


def test_align_tables_round_trips_and_names_the_first_mismatch():
    def table(pos, cands, ids=("q1", "q2")):
        return pl.DataFrame({"pair_id": list(ids), "pos_score": pos, "cand_scores": cands})

    ta = table([0.9, 0.2], [[0.2, 0.6], [0.8]])
    ids, rows = align_tables({"a": ta, "b": table([0.7, 0.8], [[0.4, 0.2], [0.2]])})
    assert ids == ["q1", "q2"] and [r.tolist() for r in rows["a"]] == [[0.9, 0.2, 0.6], [0.2, 0.8]]
    assert to_table(ids, rows["a"]).equals(ta.cast({"cand_scores": pl.List(pl.Float64)}))
    with pytest.raises(ValueError, match="judge 'b' differs from 'a' in pair_id at query q2"):
        align_tables({"a": ta, "b": table([0.7, 0.8], [[0.4, 0.2], [0.2]], ids=("q1", "q9"))})
    with pytest.raises(ValueError, match="number of candidates at query q1"):
        align_tables({"a": ta, "b": table([0.7, 0.8], [[0.4], [0.2]])})


def test_pairwise_correlations_and_filter_disagreement_by_hand():
    # ranks (1, 2, 3, 4) vs (1, 3, 2, 4): Spearman 1 - 6*2/(4*15) = 0.8; Kendall (5 - 1) / 6
    corr = pairwise_correlations(_rows(a=[[0.1, 0.2], [0.3, 0.4]], b=[[0.1, 0.3], [0.2, 0.4]]))
    assert len(corr) == 1 and corr[0]["judge_a"] == "a" and corr[0]["judge_b"] == "b" and corr[0]["pairs"] == 4
    assert corr[0]["spearman"] == pytest.approx(0.8) and corr[0]["kendall"] == pytest.approx(2 / 3)
    assert math.isnan(pairwise_correlations(_rows(a=[[0.5, 0.5]], b=[[0.1, 0.2]]))[0]["spearman"])
    flags = {"a": [np.array([True, False]), np.array([False])], "b": [np.array([True, True]), np.array([False])],
             "c": [np.array([False, True]), np.array([False])]}  # fmt: skip
    dis = filter_disagreement(flags)
    assert dis["any"] == pytest.approx(2 / 3)  # candidates 1 and 2 are not unanimous, 3 is
    assert dis["a|b"] == pytest.approx(1 / 3) and dis["a|c"] == pytest.approx(2 / 3) and dis["b|c"] == pytest.approx(1 / 3)


def test_agreement_reports_each_judges_auc_and_filter_rate():
    rows = _rows(a=A, b=B)
    flags = {"a": [np.array([False, True]), np.array([True])], "b": [np.array([False, False]), np.array([True])]}
    out = agreement(rows, flags)
    # a: positives 0.9, 0.2 vs candidates 0.2, 0.6, 0.8 -> (1 + 1 + 1 + 0.5 + 0 + 0) / 6
    assert out["per_judge"]["a"]["auc_pos_vs_candidates"] == pytest.approx(3.5 / 6)
    assert out["per_judge"]["b"]["auc_pos_vs_candidates"] == pytest.approx(1.0)  # 0.7, 0.8 vs 0.4, 0.2, 0.2
    assert out["per_judge"]["a"]["fn_filter_rate"] == pytest.approx(2 / 3)
    assert out["per_judge"]["b"]["fn_filter_rate"] == pytest.approx(1 / 3)
    assert out["fn_filter_disagreement"]["any"] == pytest.approx(1 / 3)
    assert [(p["judge_a"], p["judge_b"]) for p in out["pairwise"]] == [("a", "b")]
