"""Hand-computed checks of the UniME-V2 sampling rule (paper §4), the peers' strategies and `mine_table`."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from unime_assets.mining import filters, rules, table

POS = 0.9  # threshold = 0.89 with the default beta = 0.01
LOW, HIGH = 0.5, 0.95  # survivor / false-negative scores under POS


def _scores(n: int, false_negatives: set[int]) -> np.ndarray:
    # Distinct survivor scores so the returned scores identify the candidates.
    return np.array([HIGH if i in false_negatives else LOW - 0.001 * i for i in range(n)])


def test_all_survive_takes_every_fifth() -> None:
    s = _scores(50, set())
    idx, sc = rules.sample_unime_v2(s, POS)
    np.testing.assert_array_equal(idx, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45])
    np.testing.assert_array_equal(sc, s[idx])
    assert idx.dtype == np.int64 and sc.dtype == np.float64


def test_known_false_negatives_exact_indices() -> None:
    # Drop {0, 3, 7, 12, 20}; 45 survivors 1,2,4,5,6,8,9,10,11,13,...,19,21,...,49.
    # Survivor positions 0,5,...,40 -> candidates 1,8,14,19,25,30,35,40,45 (9 taken), then cycle -> 1.
    s = _scores(50, {0, 3, 7, 12, 20})
    mined = rules.mine_unime_v2(s, POS)
    np.testing.assert_array_equal(mined.indices, [1, 8, 14, 19, 25, 30, 35, 40, 45, 1])
    np.testing.assert_array_equal(mined.scores, s[mined.indices])
    assert mined.n_survivors == 45 and not mined.fallback


def test_two_selected_cycle_abab() -> None:
    # 7 survivors (indices 10..16) with step 5 -> positions 0 and 5 -> candidates 10, 15.
    s = _scores(50, set(range(50)) - set(range(10, 17)))
    idx, _ = rules.sample_unime_v2(s, POS)
    np.testing.assert_array_equal(idx, [10, 15] * 5)
    # Literally two survivors with step 1 gives the same A,B,A,B pattern.
    s2 = _scores(50, set(range(50)) - {4, 9})
    np.testing.assert_array_equal(rules.sample_unime_v2(s2, POS, step=1)[0], [4, 9] * 5)
    # ... whereas with step 5 only the first of two survivors is sampled.
    np.testing.assert_array_equal(rules.sample_unime_v2(s2, POS)[0], [4] * 10)


def test_seven_selected_cycle_a_to_g_then_abc() -> None:
    # 33 survivors (0..32) with step 5 -> 0,5,10,15,20,25,30 (7), then 0,5,10 again.
    s = _scores(50, set(range(33, 50)))
    mined = rules.mine_unime_v2(s, POS)
    np.testing.assert_array_equal(mined.indices, [0, 5, 10, 15, 20, 25, 30, 0, 5, 10])
    assert mined.n_survivors == 33
    # Seven literal survivors with step 1.
    keep = [2, 3, 11, 19, 20, 33, 48]
    s2 = _scores(50, set(range(50)) - set(keep))
    np.testing.assert_array_equal(rules.sample_unime_v2(s2, POS, step=1)[0], keep + keep[:3])


def test_no_survivor_fallback_random_scores_one() -> None:
    s = _scores(50, set(range(50)))
    mined = rules.mine_unime_v2(s, POS, seed=3)
    assert mined.fallback and mined.n_survivors == 0
    np.testing.assert_array_equal(mined.scores, np.ones(10))
    assert len(set(mined.indices.tolist())) == 10
    assert mined.indices.min() >= 0 and mined.indices.max() < 50
    again = rules.mine_unime_v2(s, POS, seed=3)
    np.testing.assert_array_equal(mined.indices, again.indices)
    others = {tuple(rules.mine_unime_v2(s, POS, seed=sd).indices.tolist()) for sd in range(5)}
    assert len(others) > 1  # the seed actually drives the choice


def test_fallback_with_fewer_candidates_than_k_uses_replacement() -> None:
    idx, sc = rules.sample_unime_v2([0.99, 0.98, 0.97], POS, k=10, seed=1)
    assert idx.shape == (10,) and set(idx.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(sc, np.ones(10))


def test_threshold_boundary() -> None:
    # 0.75 - 0.25 = 0.5 exactly in binary floating point.
    above = np.nextafter(0.5, 1.0)
    idx, sc = rules.sample_unime_v2([above, 0.5, above], 0.75, beta=0.25, k=2, step=1)
    np.testing.assert_array_equal(idx, [1, 1])
    np.testing.assert_array_equal(sc, [0.5, 0.5])
    # Default beta: the threshold computed the same way survives, one ulp above does not.
    thr = 0.6 - 0.01
    mined = rules.mine_unime_v2([np.nextafter(thr, 1.0), thr], 0.6, k=1)
    assert mined.indices.tolist() == [1] and mined.n_survivors == 1


def test_beta_step_k_honoured() -> None:
    s = np.array([0.80, 0.70, 0.60, 0.50, 0.40, 0.30])
    # beta 0.01 vs pos 0.9: all survive; beta 0.35: only <= 0.55 survive (indices 3, 4, 5).
    assert rules.mine_unime_v2(s, POS, step=1, k=6).n_survivors == 6
    np.testing.assert_array_equal(rules.sample_unime_v2(s, POS, beta=0.35, step=1, k=3)[0], [3, 4, 5])
    np.testing.assert_array_equal(rules.sample_unime_v2(s, POS, step=2, k=3)[0], [0, 2, 4])
    np.testing.assert_array_equal(rules.sample_unime_v2(s, POS, step=2, k=5)[0], [0, 2, 4, 0, 2])
    np.testing.assert_array_equal(rules.sample_unime_v2(s, POS, step=3, k=1)[0], [0])
    assert rules.sample_unime_v2(s, POS, k=4)[0].shape == (4,)


def test_nan_scores_do_not_survive() -> None:
    s = [np.nan, 0.2, np.nan, 0.1]
    mined = rules.mine_unime_v2(s, POS, step=1, k=4)
    np.testing.assert_array_equal(mined.indices, [1, 3, 1, 3])
    assert mined.n_survivors == 2
    # A NaN positive score makes every comparison fail -> fallback.
    assert rules.mine_unime_v2([0.1, 0.2], float("nan"), k=2).fallback


def test_accepts_lists_and_torch() -> None:
    s = _scores(50, {0, 3, 7, 12, 20})
    ref = rules.sample_unime_v2(s, POS)
    for inp, pos in [(s.tolist(), POS), (torch.tensor(s, dtype=torch.float64), torch.tensor(POS))]:
        idx, sc = rules.sample_unime_v2(inp, pos)
        np.testing.assert_array_equal(idx, ref[0])
        np.testing.assert_allclose(sc, ref[1])
    assert isinstance(rules.mine_unime_v2(s, POS), rules.MinedNegatives)


@pytest.mark.parametrize(
    ("scores", "kwargs"),
    [([], {}), ([0.1], {"step": 0}), ([0.1], {"k": 0}), ([[0.1, 0.2]], {})],
)
def test_invalid_inputs(scores: list, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        rules.sample_unime_v2(scores, POS, **kwargs)


# --- the peers' strategies (hand-computed) ---------------------------------------------------------


def test_topk_abs_keeps_scores_below_tau_in_retrieval_order() -> None:
    s = [0.9, 0.5, 0.72, 0.1, 0.7, 0.3]  # 0.7 itself is not < 0.7
    m = rules.mine_topk_abs(s, tau=0.7, k=5)
    np.testing.assert_array_equal(m.indices, [1, 3, 5, 1, 3])  # 3 survivors, cyclic repeat
    np.testing.assert_array_equal(m.scores, [0.5, 0.1, 0.3, 0.5, 0.1])
    assert (m.n_survivors, m.n_filtered, m.fallback) == (3, 3, False)
    np.testing.assert_array_equal(rules.mine_topk_abs(s, tau=0.95, k=2).indices, [0, 1])  # first k, no step


def test_topk_margin_pos() -> None:
    # threshold 0.75 - 0.25 = 0.5 exactly: 0.5 is dropped, 0.49 kept
    m = rules.mine_topk_margin_pos([0.6, 0.5, 0.49, 0.1], 0.75, margin=0.25, k=3)
    np.testing.assert_array_equal(m.indices, [2, 3, 2])
    assert (m.n_survivors, m.n_filtered) == (2, 2)
    # default margin 0.05 against positive 0.8: keep < 0.75
    np.testing.assert_array_equal(rules.mine_topk_margin_pos([0.78, 0.74, 0.76, 0.2], 0.8, k=2).indices, [1, 3])


def test_topk_perc_pos_and_a_negative_positive() -> None:
    # 0.95 * 0.8 = 0.76
    m = rules.mine_topk_perc_pos([0.79, 0.77, 0.75, 0.5, 0.76], 0.8, k=2)
    np.testing.assert_array_equal(m.indices, [2, 3])
    assert m.n_filtered == 3
    # s+ = -0.2, perc 0.5: keep s < -0.2 - 0.2 * 0.5 = -0.3 (0.5 * s+ = -0.1 would keep -0.15 > s+)
    m = rules.mine_topk_perc_pos([-0.15, -0.25, -0.35], -0.2, perc=0.5, k=2)
    np.testing.assert_array_equal(m.indices, [2, 2])
    assert m.n_survivors == 1
    with pytest.raises(ValueError, match="perc"):
        rules.mine_topk_perc_pos([0.1], 0.5, perc=1.5)


def test_rank_window() -> None:
    s = np.linspace(0.9, 0.1, 50)
    m = rules.mine_rank_window(s)  # B3 defaults 30, 100 on a 50-candidate list: ranks 30..49
    np.testing.assert_array_equal(m.indices, np.arange(30, 40))
    assert (m.n_survivors, m.n_filtered) == (20, 30)
    np.testing.assert_array_equal(rules.mine_rank_window(s, window_start=45).indices, [45, 46, 47, 48, 49] * 2)
    np.testing.assert_array_equal(
        rules.mine_rank_window(s[:10], window_start=2, window_size=3, k=4).indices, [2, 3, 4, 2]
    )
    short = rules.mine_rank_window(s[:20], k=4, seed=1)  # nothing at rank >= 30: random fallback
    assert short.fallback and short.n_survivors == 0 and short.n_filtered == 20
    np.testing.assert_array_equal(short.scores, np.ones(4))


def test_top_and_random() -> None:
    s = np.linspace(0.9, 0.1, 20)
    np.testing.assert_array_equal(rules.mine_top(s, k=4).indices, [0, 1, 2, 3])
    np.testing.assert_array_equal(rules.mine_top(s[:3], k=5).indices, [0, 1, 2, 0, 1])
    r = rules.mine_random(s, k=6, seed=7)
    assert len(set(r.indices.tolist())) == 6 and np.all(np.diff(r.indices) > 0)  # distinct, retrieval order
    np.testing.assert_array_equal(r.scores, s[r.indices])
    np.testing.assert_array_equal(rules.mine_random(s, k=6, seed=7).indices, r.indices)
    assert len({tuple(rules.mine_random(s, k=6, seed=sd).indices.tolist()) for sd in range(5)}) > 1
    np.testing.assert_array_equal(rules.mine_random(s[:3], k=5, seed=0).indices, [0, 1, 2, 0, 1])
    assert not r.fallback and r.n_filtered == 0


def test_filter_on_retriever_similarities_returns_judge_scores() -> None:
    judge = [0.1, 0.2, 0.3, 0.4]
    sims = [0.9, 0.5, 0.95, 0.2]  # retriever similarities, positive 0.8: keep sims < 0.75
    m = rules.mine_topk_margin_pos(judge, 0.99, k=2, filter_scores=sims, filter_positive=0.8)
    np.testing.assert_array_equal(m.indices, [1, 3])
    np.testing.assert_array_equal(m.scores, [0.2, 0.4])
    np.testing.assert_array_equal(rules.mine_topk_abs(judge, tau=0.6, k=2, filter_scores=sims).indices, [1, 3])
    with pytest.raises(ValueError, match="filter_positive"):
        rules.mine_topk_perc_pos(judge, 0.9, filter_scores=sims)


def test_no_survivor_falls_back_for_the_filters() -> None:
    s = [0.9, 0.8, 0.95, 0.85]
    for m in (rules.mine_topk_abs(s, k=3, seed=2), rules.mine_topk_margin_pos(s, 0.8, k=3, seed=2),
              rules.mine_topk_perc_pos(s, 0.8, k=3, seed=2)):  # fmt: skip
        assert m.fallback and m.n_survivors == 0 and m.n_filtered == 4
        assert len(set(m.indices.tolist())) == 3
        np.testing.assert_array_equal(m.scores, np.ones(3))
    assert rules.mine_topk_abs([np.nan, 0.1], k=1).indices.tolist() == [1]  # NaN never survives


def test_unime_v2_reports_filtered_count() -> None:
    m = rules.mine_unime_v2(_scores(50, {0, 3, 7, 12, 20}), POS)
    assert (m.n_survivors, m.n_filtered) == (45, 5)


# --- whole tables -------------------------------------------------------------------------------------


def _tables():
    judge = pl.DataFrame({
        "pair_id": ["a", "b", "c"],
        "pos_score": [0.9, 0.8, 0.5],
        "cand_scores": [[0.95, 0.5, 0.4, 0.3], [0.1, 0.2, 0.79, 0.3], [0.6, 0.7]],
    })  # fmt: skip
    pool = pl.DataFrame(
        {
            "pair_id": ["a", "b", "c"],
            "pos_cand_id": [0, 1, 2],
            "cand_ids": [[10, 11, 12, 13], [20, 21, 22, 23], [30, 31]],
            "cand_sims": [[0.7, 0.6, 0.5, 0.4], [0.9, 0.3, 0.2, 0.1], [0.3, 0.2]],
            "pos_sim": [0.8, 0.85, 0.4],
        },
        schema_overrides={"cand_sims": pl.List(pl.Float32), "pos_sim": pl.Float32},
    )
    return judge, pool


def test_mine_table_columns_and_the_default_strategy() -> None:
    judge, pool = _tables()
    df = table.mine_table(judge, pool, k=2, step=1)
    assert df.columns == ["pair_id", "neg_cand_ids", "neg_scores", "strategy", "fallback", "n_survivors",
                          "n_filtered"]  # fmt: skip
    assert df.schema["neg_cand_ids"] == pl.List(pl.Int64) and df.schema["neg_scores"] == pl.List(pl.Float64)
    # a: 0.95 > 0.9 - 0.01 dropped -> 11, 12; b: all four <= 0.79 survive -> 20, 21
    assert df["neg_cand_ids"].to_list()[:2] == [[11, 12], [20, 21]]
    assert df["strategy"].to_list() == ["unime_v2"] * 3
    # c: both 0.6 and 0.7 > 0.49 -> fallback: random among its two candidates, scores 1.0
    assert df["fallback"].to_list() == [False, False, True] and df["neg_scores"][2].to_list() == [1.0, 1.0]
    assert set(df["neg_cand_ids"][2].to_list()) == {30, 31}
    assert df["n_survivors"].to_list() == [3, 4, 0] and df["n_filtered"].to_list() == [1, 0, 2]


@pytest.mark.parametrize(
    ("kwargs", "ids", "scores"),
    [
        ({"strategy": "topk_abs", "tau": 0.45}, [[12, 13], [20, 21], None], [[0.4, 0.3], [0.1, 0.2], None]),
        ({"strategy": "topk_margin_pos"}, [[11, 12], [20, 21], None], [[0.5, 0.4], [0.1, 0.2], None]),
        ({"strategy": "topk_perc_pos", "score_source": "retriever"},  # keep sims < 0.95 * pos_sim
         [[10, 11], [21, 22], [30, 31]], [[0.95, 0.5], [0.2, 0.79], [0.6, 0.7]]),
        ({"strategy": "rank_window", "window_start": 1, "window_size": 2},
         [[11, 12], [21, 22], [31, 31]], [[0.5, 0.4], [0.2, 0.79], [0.7, 0.7]]),
        ({"strategy": "top"}, [[10, 11], [20, 21], [30, 31]], [[0.95, 0.5], [0.1, 0.2], [0.6, 0.7]]),
    ],
)  # fmt: skip
def test_mine_table_dispatches_by_strategy(kwargs, ids, scores) -> None:
    judge, pool = _tables()
    df = table.mine_table(judge, pool, k=2, **kwargs)
    assert df["strategy"].to_list() == [kwargs["strategy"]] * 3
    for i in range(3):
        if ids[i] is None:  # nothing survives: fallback
            assert df["fallback"][i] and df["neg_scores"][i].to_list() == [1.0, 1.0]
        else:
            assert df["neg_cand_ids"][i].to_list() == ids[i] and not df["fallback"][i]
            np.testing.assert_allclose(df["neg_scores"][i].to_list(), scores[i])


def test_mine_table_reads_mining_settings_and_seeds_by_pair_id() -> None:
    from unime_assets.config import MiningSettings

    judge, pool = _tables()
    settings = MiningSettings(strategy="random", n_negatives=3, seed=5)
    df = table.mine_table(judge, pool, settings)
    assert df["strategy"][0] == "random" and (df["neg_cand_ids"].list.len() == 3).all()
    # the same query mined in another partition (other rows, other order) draws the same negatives
    part = table.mine_table(judge.reverse(), pool.reverse(), settings)
    assert part.reverse()["neg_cand_ids"].to_list() == df["neg_cand_ids"].to_list()
    # keyword arguments override the settings
    assert table.mine_table(judge, pool, settings, strategy="top")["strategy"][0] == "top"


def test_settings_strategies_match_the_mining_module() -> None:
    from typing import get_args

    from unime_assets.config import MiningSettings

    assert set(get_args(MiningSettings.model_fields["strategy"].annotation)) == set(rules.STRATEGIES)
    params = table.MiningParams.from_settings(MiningSettings())
    assert (params.strategy, params.k, params.beta, params.step, params.perc, params.margin) == (
        "unime_v2", 10, 0.01, 5, 0.95, 0.05)  # fmt: skip
    assert table.MiningParams.from_settings({"n_negatives": 4, "tau": 0.5}).k == 4
    with pytest.raises(ValueError, match="unknown mining strategy"):
        table.MiningParams(strategy="hardest")
    with pytest.raises(ValueError):
        MiningSettings(perc=0)


def test_mine_table_empty_retrieval_and_misaligned_inputs() -> None:
    judge = pl.DataFrame({"pair_id": ["a"], "pos_score": [0.9], "cand_scores": [[]]},
                         schema_overrides={"cand_scores": pl.List(pl.Float64)})  # fmt: skip
    pool = pl.DataFrame({"pair_id": ["a"], "pos_cand_id": [2], "cand_ids": [[]], "cand_sims": [[]], "pos_sim": [0.5]},
                        schema_overrides={"cand_ids": pl.List(pl.Int64), "cand_sims": pl.List(pl.Float32)})  # fmt: skip
    for strategy in rules.STRATEGIES:
        df = table.mine_table(judge, pool, strategy=strategy, k=3, n_pool=4)
        assert df["fallback"][0] and 2 not in df["neg_cand_ids"][0].to_list()  # never the positive
        assert (
            set(df["neg_cand_ids"][0].to_list()) <= {0, 1, 3} and df["neg_scores"][0].to_list() == [1.0] * 3
        )
    with pytest.raises(ValueError, match="no retrieved candidates"):
        table.mine_table(judge, pool, k=3)
    j2, p2 = _tables()
    with pytest.raises(ValueError, match="do not match"):
        table.mine_table(j2, p2.reverse())
    with pytest.raises(ValueError, match="judge scores for"):
        table.mine_table(j2.with_columns(pl.col("cand_scores").list.head(1)), p2)
    with pytest.raises(ValueError, match="retriever"):
        table.mine_query(table.MiningParams(strategy="topk_abs", score_source="retriever"), [0.1], 0.5)


def test_filter_counts_and_rates() -> None:
    judge, pool = _tables()
    counts = filters.filter_counts(judge, pool, strategy="unime_v2")
    assert counts.columns == ["pair_id", "n_candidates", "n_survivors", "n_filtered"]
    assert counts["n_filtered"].to_list() == [1, 0, 2] and counts["n_candidates"].to_list() == [4, 4, 2]
    rates = filters.filter_rates(judge, pool, tau=0.45)
    # unime_v2 3/10; topk_abs (< 0.45): a drops 0.95, 0.5; b drops 0.79; c drops both -> 5/10
    # margin (< pos - 0.05): a 0.95; b 0.79; c both -> 4/10; perc (< 0.95 pos): a 0.95; b 0.79; c both -> 4/10
    assert rates == {"unime_v2": 0.3, "topk_abs": 0.5, "topk_margin_pos": 0.4, "topk_perc_pos": 0.4}


@pytest.mark.parametrize("strategy", rules.STRATEGIES)
@pytest.mark.parametrize("source", ["judge", "retriever"])
def test_survivor_mask_agrees_with_mining(strategy, source) -> None:
    rng = np.random.default_rng(11)
    params = table.MiningParams(strategy=strategy, score_source=source, window_start=5, window_size=20, tau=0.5)
    for _ in range(20):
        judge, sims = rng.uniform(0, 1, 40), np.sort(rng.uniform(-0.2, 0.9, 40))[::-1]
        pos, pos_sim = rng.uniform(0.3, 1.0), rng.uniform(0.0, 0.95)
        mask = filters.survivor_mask(params, judge, pos, retriever_sims=sims, retriever_positive=pos_sim)
        mined = table.mine_query(params, judge, pos, retriever_sims=sims, retriever_positive=pos_sim)
        assert mask.sum() == mined.n_survivors and (~mask).sum() == mined.n_filtered
        if not mined.fallback and strategy != "random":  # chosen negatives are survivors
            assert mask[mined.indices].all()


def test_kept_and_dropped_scores() -> None:
    judge, pool = _tables()
    kept, dropped = filters.kept_and_dropped(judge, pool)  # unime_v2: a drops 0.95, c drops 0.6 and 0.7
    assert sorted(dropped.tolist()) == [0.6, 0.7, 0.95]
    assert sorted(kept.tolist()) == [0.1, 0.2, 0.3, 0.3, 0.4, 0.5, 0.79]
    kept, dropped = filters.kept_and_dropped(judge, pool, strategy="top")
    assert len(kept) == 10 and len(dropped) == 0
