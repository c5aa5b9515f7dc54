"""Hand-computed checks of the UniME-V2 hard-negative sampling rule (paper §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unime_assets.mining import MinedNegatives, mine_unime_v2, sample_unime_v2

POS = 0.9  # threshold = 0.89 with the default beta = 0.01
LOW, HIGH = 0.5, 0.95  # survivor / false-negative scores under POS


def _scores(n: int, false_negatives: set[int]) -> np.ndarray:
    # Distinct survivor scores so the returned scores identify the candidates.
    return np.array([HIGH if i in false_negatives else LOW - 0.001 * i for i in range(n)])


def test_all_survive_takes_every_fifth() -> None:
    s = _scores(50, set())
    idx, sc = sample_unime_v2(s, POS)
    np.testing.assert_array_equal(idx, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45])
    np.testing.assert_array_equal(sc, s[idx])
    assert idx.dtype == np.int64 and sc.dtype == np.float64


def test_known_false_negatives_exact_indices() -> None:
    # Drop {0, 3, 7, 12, 20}; 45 survivors 1,2,4,5,6,8,9,10,11,13,...,19,21,...,49.
    # Survivor positions 0,5,...,40 -> candidates 1,8,14,19,25,30,35,40,45 (9 taken), then cycle -> 1.
    s = _scores(50, {0, 3, 7, 12, 20})
    mined = mine_unime_v2(s, POS)
    np.testing.assert_array_equal(mined.indices, [1, 8, 14, 19, 25, 30, 35, 40, 45, 1])
    np.testing.assert_array_equal(mined.scores, s[mined.indices])
    assert mined.n_survivors == 45 and not mined.fallback


def test_two_selected_cycle_abab() -> None:
    # 7 survivors (indices 10..16) with step 5 -> positions 0 and 5 -> candidates 10, 15.
    s = _scores(50, set(range(50)) - set(range(10, 17)))
    idx, _ = sample_unime_v2(s, POS)
    np.testing.assert_array_equal(idx, [10, 15] * 5)
    # Literally two survivors with step 1 gives the same A,B,A,B pattern.
    s2 = _scores(50, set(range(50)) - {4, 9})
    np.testing.assert_array_equal(sample_unime_v2(s2, POS, step=1)[0], [4, 9] * 5)
    # ... whereas with step 5 only the first of two survivors is sampled.
    np.testing.assert_array_equal(sample_unime_v2(s2, POS)[0], [4] * 10)


def test_seven_selected_cycle_a_to_g_then_abc() -> None:
    # 33 survivors (0..32) with step 5 -> 0,5,10,15,20,25,30 (7), then 0,5,10 again.
    s = _scores(50, set(range(33, 50)))
    mined = mine_unime_v2(s, POS)
    np.testing.assert_array_equal(mined.indices, [0, 5, 10, 15, 20, 25, 30, 0, 5, 10])
    assert mined.n_survivors == 33
    # Seven literal survivors with step 1.
    keep = [2, 3, 11, 19, 20, 33, 48]
    s2 = _scores(50, set(range(50)) - set(keep))
    np.testing.assert_array_equal(sample_unime_v2(s2, POS, step=1)[0], keep + keep[:3])


def test_no_survivor_fallback_random_scores_one() -> None:
    s = _scores(50, set(range(50)))
    mined = mine_unime_v2(s, POS, seed=3)
    assert mined.fallback and mined.n_survivors == 0
    np.testing.assert_array_equal(mined.scores, np.ones(10))
    assert len(set(mined.indices.tolist())) == 10
    assert mined.indices.min() >= 0 and mined.indices.max() < 50
    again = mine_unime_v2(s, POS, seed=3)
    np.testing.assert_array_equal(mined.indices, again.indices)
    others = {tuple(mine_unime_v2(s, POS, seed=sd).indices.tolist()) for sd in range(5)}
    assert len(others) > 1  # the seed actually drives the choice


def test_fallback_with_fewer_candidates_than_k_uses_replacement() -> None:
    idx, sc = sample_unime_v2([0.99, 0.98, 0.97], POS, k=10, seed=1)
    assert idx.shape == (10,) and set(idx.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(sc, np.ones(10))


def test_threshold_boundary() -> None:
    # 0.75 - 0.25 = 0.5 exactly in binary floating point.
    above = np.nextafter(0.5, 1.0)
    idx, sc = sample_unime_v2([above, 0.5, above], 0.75, beta=0.25, k=2, step=1)
    np.testing.assert_array_equal(idx, [1, 1])
    np.testing.assert_array_equal(sc, [0.5, 0.5])
    # Default beta: the threshold computed the same way survives, one ulp above does not.
    thr = 0.6 - 0.01
    mined = mine_unime_v2([np.nextafter(thr, 1.0), thr], 0.6, k=1)
    assert mined.indices.tolist() == [1] and mined.n_survivors == 1


def test_beta_step_k_honoured() -> None:
    s = np.array([0.80, 0.70, 0.60, 0.50, 0.40, 0.30])
    # beta 0.01 vs pos 0.9: all survive; beta 0.35: only <= 0.55 survive (indices 3, 4, 5).
    assert mine_unime_v2(s, POS, step=1, k=6).n_survivors == 6
    np.testing.assert_array_equal(sample_unime_v2(s, POS, beta=0.35, step=1, k=3)[0], [3, 4, 5])
    np.testing.assert_array_equal(sample_unime_v2(s, POS, step=2, k=3)[0], [0, 2, 4])
    np.testing.assert_array_equal(sample_unime_v2(s, POS, step=2, k=5)[0], [0, 2, 4, 0, 2])
    np.testing.assert_array_equal(sample_unime_v2(s, POS, step=3, k=1)[0], [0])
    assert sample_unime_v2(s, POS, k=4)[0].shape == (4,)


def test_nan_scores_do_not_survive() -> None:
    s = [np.nan, 0.2, np.nan, 0.1]
    mined = mine_unime_v2(s, POS, step=1, k=4)
    np.testing.assert_array_equal(mined.indices, [1, 3, 1, 3])
    assert mined.n_survivors == 2
    # A NaN positive score makes every comparison fail -> fallback.
    assert mine_unime_v2([0.1, 0.2], float("nan"), k=2).fallback


def test_accepts_lists_and_torch() -> None:
    s = _scores(50, {0, 3, 7, 12, 20})
    ref = sample_unime_v2(s, POS)
    for inp, pos in [(s.tolist(), POS), (torch.tensor(s, dtype=torch.float64), torch.tensor(POS))]:
        idx, sc = sample_unime_v2(inp, pos)
        np.testing.assert_array_equal(idx, ref[0])
        np.testing.assert_allclose(sc, ref[1])
    assert isinstance(mine_unime_v2(s, POS), MinedNegatives)


@pytest.mark.parametrize(
    ("scores", "kwargs"),
    [([], {}), ([0.1], {"step": 0}), ([0.1], {"k": 0}), ([[0.1, 0.2]], {})],
)
def test_invalid_inputs(scores: list, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sample_unime_v2(scores, POS, **kwargs)
