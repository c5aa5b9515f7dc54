"""The judge-alignment loss against a hand-written float64 reference of the official formula
(UniME-v2 Embedding/src/loss.py: kl_div(log(softmax + 1e-8), target), batchmean, both directions)
on realistic inputs: cosines in [-1, 1], judge scores with exact 0 and 1, the mining fallback's 1.0,
and the 50 released records. Values and gradients must agree to 1e-6 relative."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unime_assets.losses import OFFICIAL_LOG_EPS, judge_alignment_loss

FIXTURE = Path(__file__).parent / "fixtures" / "unime_v2_example_scores.json"
TAU = 0.02
RTOL = 1e-6


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference(sims: np.ndarray, judge: np.ndarray, tau: float, eps: float) -> tuple[float, np.ndarray]:
    """Loss and d loss / d sims, written out by hand in float64 (no autograd).

    L = 0.5/N * sum_ij [ q_ij (log q_ij - log(p_ij + eps)) + p_ij (log p_ij - log(q_ij + eps)) ].
    dL/dp_ij = 0.5/N * (-q_ij / (p_ij + eps) + log p_ij + 1 - log(q_ij + eps)), and through the
    softmax dL/ds_ik = p_ik (g_ik - sum_j p_ij g_ij) / tau.
    """
    n, c = sims.shape
    p, q = _softmax(sims / tau), _softmax(judge / tau)
    loss = 0.0
    grad = np.zeros_like(sims)
    for i in range(n):
        g = np.zeros(c)
        for j in range(c):
            xlogx_q = q[i, j] * np.log(q[i, j]) if q[i, j] > 0 else 0.0
            xlogx_p = p[i, j] * np.log(p[i, j]) if p[i, j] > 0 else 0.0
            loss += xlogx_q - q[i, j] * np.log(p[i, j] + eps) + xlogx_p - p[i, j] * np.log(q[i, j] + eps)
            g[j] = 0.5 / n * (-q[i, j] / (p[i, j] + eps) + np.log(p[i, j]) + 1.0 - np.log(q[i, j] + eps))
        grad[i] = p[i] * (g - (p[i] * g).sum()) / tau
    return 0.5 * loss / n, grad


def official_torch(sims: torch.Tensor, judge: torch.Tensor, tau: float) -> torch.Tensor:
    """The official module's arithmetic, restated: softmax, log(x + 1e-8) on the input side."""
    p, q = F.softmax(sims / tau, dim=-1), F.softmax(judge / tau, dim=-1)
    kl_pq = F.kl_div(torch.log(p + 1e-8), q, reduction="batchmean")
    kl_qp = F.kl_div(torch.log(q + 1e-8), p, reduction="batchmean")
    return 0.5 * (kl_pq + kl_qp)


def _ours(sims: np.ndarray, judge: np.ndarray, **kw) -> tuple[float, np.ndarray]:
    s = torch.tensor(sims, dtype=torch.float64, requires_grad=True)
    loss = judge_alignment_loss(s, torch.tensor(judge, dtype=torch.float64), **kw)
    loss.backward()
    return loss.item(), s.grad.numpy()


def _assert_rel(got_loss, got_grad, ref_loss, ref_grad) -> None:
    assert got_loss == pytest.approx(ref_loss, rel=RTOL)
    # Gradient: every entry within 1e-6 of the reference, relative to the gradient's scale.
    np.testing.assert_allclose(got_grad, ref_grad, rtol=RTOL, atol=RTOL * np.abs(ref_grad).max())


def released_judge_scores(k: int = 8) -> np.ndarray:
    rows = json.loads(FIXTURE.read_text())
    return np.array([[r["query_pos_scores"], *r["hard_negatives_scores"][:k]] for r in rows], dtype=np.float64)


def synthetic_regime(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosines in [-1, 1] (uniform, plus rows clustered around 0.3 as trained embedders give), judge
    scores with exact 0s and 1s and the fallback rows (negatives scored 1.0)."""
    rng = np.random.default_rng(seed)
    sims = np.concatenate([rng.uniform(-1, 1, (16, 9)), np.clip(rng.normal(0.3, 0.05, (16, 9)), -1, 1)])
    judge = rng.uniform(0, 1, (32, 9))
    judge[rng.random((32, 9)) < 0.2] = 0.0
    judge[rng.random((32, 9)) < 0.1] = 1.0
    judge[:4, 1:] = 1.0  # mining fallback: random negatives with score 1.0
    judge[4, :] = [1.0] + [0.0] * 8
    judge[5, :] = [0.0] + [1.0] * 8
    return sims, judge


def _released_regimes() -> list[tuple[str, np.ndarray, np.ndarray]]:
    judge = released_judge_scores()
    rng = np.random.default_rng(0)
    n = len(judge)
    near = np.clip(rng.normal(0.30, 0.05, judge.shape), -1, 1)
    favoured = np.concatenate([rng.normal(0.45, 0.03, (n, 1)), rng.normal(0.35, 0.03, (n, 8))], axis=1)
    return [("released, cos ~ N(0.3, 0.05)", near, judge), ("released, positive favoured", favoured, judge),
            ("released, cos ~ U(-1, 1)", rng.uniform(-1, 1, judge.shape), judge)]  # fmt: skip


REGIMES = [("synthetic seed 0", *synthetic_regime(0)), ("synthetic seed 1", *synthetic_regime(1)),
           *_released_regimes()]  # fmt: skip


@pytest.mark.parametrize(("name", "sims", "judge"), REGIMES, ids=[r[0] for r in REGIMES])
def test_default_is_the_official_eps_formula(name, sims, judge):
    ref_loss, ref_grad = reference(sims, judge, TAU, OFFICIAL_LOG_EPS)
    _assert_rel(*_ours(sims, judge), ref_loss, ref_grad)  # the default: eps = 1e-8, tau = 0.02
    # The restated official torch code agrees with the hand-written reference too (checks the reference).
    s = torch.tensor(sims, requires_grad=True)
    off = official_torch(s, torch.tensor(judge), TAU)
    off.backward()
    _assert_rel(off.item(), s.grad.numpy(), ref_loss, ref_grad)


@pytest.mark.parametrize(("name", "sims", "judge"), REGIMES, ids=[r[0] for r in REGIMES])
def test_eps_zero_is_the_exact_form_and_differs_where_eps_matters(name, sims, judge):
    exact_loss, exact_grad = reference(sims, judge, TAU, 0.0)
    got_loss, got_grad = _ours(sims, judge, eps=0.0)
    _assert_rel(got_loss, got_grad, exact_loss, exact_grad)
    # These are inputs where the eps matters: the two forms differ far beyond the tolerance, so
    # the test above would fail if either form were computed as the other.
    q = _softmax(judge / TAU)
    assert (q < OFFICIAL_LOG_EPS).mean() > 0.1
    eps_loss, eps_grad = reference(sims, judge, TAU, OFFICIAL_LOG_EPS)
    assert abs(exact_loss - eps_loss) > 0.05 * abs(eps_loss)
    cosine = (exact_grad * eps_grad).sum() / np.linalg.norm(exact_grad) / np.linalg.norm(eps_grad)
    assert cosine < 0.999


def test_released_records_measurements():
    """The figures quoted in docs/fidelity.md: on the 50 released records about half of all Q
    entries are below 1e-8, and the exact loss is well above the official one."""
    judge = released_judge_scores()
    q = _softmax(judge / TAU)
    assert 0.45 < (q < 1e-8).mean() < 0.55
    assert 0.70 < (q < 1e-8).any(axis=1).mean() < 0.80
    _, sims, _ = _released_regimes()[0]
    ratio = reference(sims, judge, TAU, 0.0)[0] / reference(sims, judge, TAU, OFFICIAL_LOG_EPS)[0]
    assert ratio > 1.4


def test_float32_default_matches_float64_reference():
    sims, judge = synthetic_regime(2)
    s = torch.tensor(sims, dtype=torch.float32, requires_grad=True)
    loss = judge_alignment_loss(s, torch.tensor(judge, dtype=torch.float32))
    loss.backward()
    ref_loss, ref_grad = reference(sims.astype(np.float32).astype(np.float64), judge.astype(np.float32).astype(np.float64),
                                   TAU, OFFICIAL_LOG_EPS)  # fmt: skip
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss, rel=1e-4)
    np.testing.assert_allclose(s.grad.numpy(), ref_grad, rtol=1e-3, atol=1e-3 * np.abs(ref_grad).max())


def test_eps_validation():
    with pytest.raises(ValueError, match="eps"):
        judge_alignment_loss(torch.zeros(2, 3), torch.zeros(2, 3), eps=-1e-8)
