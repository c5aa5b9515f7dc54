"""Judge-alignment (symmetric KL) and InfoNCE losses checked against hand/numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unime_assets.losses import info_nce_loss, judge_alignment_loss

SIMS = np.array([[0.8, 0.5, 0.3], [0.2, 0.6, 0.1]])
JUDGE = np.array([[0.9, 0.4, 0.1], [0.7, 0.7, 0.2]])


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_reference(sims: np.ndarray, judge: np.ndarray, tau: float) -> float:
    p, q = _np_softmax(sims / tau), _np_softmax(judge / tau)
    n = sims.shape[0]
    kl_pq = sum(p[i, j] * np.log(p[i, j] / q[i, j]) for i in range(n) for j in range(3)) / n
    kl_qp = sum(q[i, j] * np.log(q[i, j] / p[i, j]) for i in range(n) for j in range(3)) / n
    return 0.5 * (kl_pq + kl_qp)


@pytest.mark.parametrize("tau", [0.02, 0.1, 1.0])
def test_matches_hand_computed_2x3(tau: float) -> None:
    # The exact form (eps = 0); the default official eps form is pinned in test_losses_official_eps.py.
    got = judge_alignment_loss(torch.tensor(SIMS), torch.tensor(JUDGE), temperature=tau, eps=0.0)
    assert got.dim() == 0
    assert got.item() == pytest.approx(_np_reference(SIMS, JUDGE, tau), abs=1e-6)


def test_close_to_official_eps_formula() -> None:
    # Official: 0.5 * (kl_div(log(Q+1e-8), P) + kl_div(log(P+1e-8), Q)), batchmean.
    s, j = torch.tensor(SIMS), torch.tensor(JUDGE)
    p, q = torch.softmax(s / 0.1, -1), torch.softmax(j / 0.1, -1)
    kl = torch.nn.functional.kl_div
    official = 0.5 * (
        kl(torch.log(q + 1e-8), p, reduction="batchmean") + kl(torch.log(p + 1e-8), q, reduction="batchmean")
    )
    assert judge_alignment_loss(s, j, 0.1).item() == pytest.approx(official.item(), abs=1e-6)


def test_zero_when_equal_and_symmetric() -> None:
    s, j = torch.tensor(SIMS), torch.tensor(JUDGE)
    assert judge_alignment_loss(s, s.clone(), eps=0.0).item() == pytest.approx(0.0, abs=1e-12)
    # The official eps form is zero only up to the eps: -sum(eps) per row at most.
    assert judge_alignment_loss(s, s.clone()).item() == pytest.approx(0.0, abs=3e-8)
    assert judge_alignment_loss(s, j).item() == pytest.approx(judge_alignment_loss(j, s).item(), rel=1e-12)
    assert judge_alignment_loss(s, j).item() > 0


def test_temperature_changes_value() -> None:
    s, j = torch.tensor(SIMS), torch.tensor(JUDGE)
    assert judge_alignment_loss(s, j, 0.02).item() != pytest.approx(judge_alignment_loss(s, j, 0.05).item())


def test_gradient_only_into_similarities() -> None:
    s = torch.tensor(SIMS, requires_grad=True)
    j = torch.tensor(JUDGE, requires_grad=True)
    judge_alignment_loss(s, j).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert j.grad is None


def test_gradcheck_float64() -> None:
    s = torch.tensor(SIMS, dtype=torch.float64, requires_grad=True)
    j = torch.tensor(JUDGE, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: judge_alignment_loss(x, j, temperature=0.1), (s,))


def test_low_precision_inputs_are_upcast() -> None:
    s = torch.tensor(SIMS, dtype=torch.bfloat16)
    got = judge_alignment_loss(s, torch.tensor(JUDGE, dtype=torch.float32), temperature=0.1)
    assert got.dtype == torch.float32
    ref = _np_reference(s.float().numpy().astype(np.float64), JUDGE, 0.1)
    assert got.item() == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize(
    ("sims", "judge", "tau"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), 0.02),  # shape mismatch
        (torch.zeros(3), torch.zeros(3), 0.02),  # not 2-D
        (torch.zeros(2, 1), torch.zeros(2, 1), 0.02),  # a single column
        (torch.zeros(2, 3), torch.zeros(2, 3), 0.0),  # bad temperature
    ],
)
def test_judge_loss_validation(sims: torch.Tensor, judge: torch.Tensor, tau: float) -> None:
    with pytest.raises(ValueError):
        judge_alignment_loss(sims, judge, temperature=tau)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_ce(logits: np.ndarray, target: np.ndarray) -> float:
    logp = logits - logits.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(target)), target].mean())


def test_info_nce_per_query_candidates() -> None:
    rng = np.random.default_rng(0)
    q, c = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(3, 5, 4)))
    logits = np.einsum("nd,ncd->nc", q, c) / 0.05
    got = info_nce_loss(torch.tensor(q), torch.tensor(c), temperature=0.05)
    assert got.item() == pytest.approx(_np_ce(logits, np.zeros(3, dtype=int)), abs=1e-6)


def test_info_nce_in_batch_diagonal_and_extra_negatives() -> None:
    rng = np.random.default_rng(1)
    q, c = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(5, 4)))  # 2 extra negatives
    got = info_nce_loss(torch.tensor(q), torch.tensor(c), temperature=0.05)
    assert got.item() == pytest.approx(_np_ce(q @ c.T / 0.05, np.arange(3)), abs=1e-6)
    # Unnormalised inputs give the same value (defensive normalisation).
    again = info_nce_loss(torch.tensor(q * 3.0), torch.tensor(c * 0.5), temperature=0.05)
    assert again.item() == pytest.approx(got.item(), abs=1e-9)


def test_info_nce_gradient_and_validation() -> None:
    q = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 3, 4, dtype=torch.float64)
    info_nce_loss(q, c).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(ValueError):
        info_nce_loss(torch.randn(3, 4), torch.randn(2, 4))  # fewer in-batch candidates than queries
    with pytest.raises(ValueError):
        info_nce_loss(torch.randn(3, 4), torch.randn(3, 2, 5))  # dimension mismatch


def test_info_nce_duplicate_mask_removes_false_in_batch_negatives():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    pos = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])  # rows 0, 1 share a label
    got = info_nce_loss(q, pos, 0.1, duplicate_mask=same)
    logits = q @ pos.T / 0.1
    expected = torch.stack([
        -torch.log_softmax(logits[0, [0, 2]], 0)[0],
        -torch.log_softmax(logits[1, [1, 2]], 0)[0],
        -torch.log_softmax(logits[2], 0)[2],
    ]).mean()  # fmt: skip
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, info_nce_loss(q, pos, 0.1))


def test_gradient_equals_official_formula_gradient() -> None:
    """The official code back-propagates through P in both KL terms (P is kl_div's target in
    KL(P||Q)); the judge side is constant. Our log_softmax form must give the same gradient."""
    sims = torch.tensor(SIMS, dtype=torch.float64, requires_grad=True)
    judge = torch.tensor(JUDGE, dtype=torch.float64)
    judge_alignment_loss(sims, judge, temperature=0.1).backward()
    ours = sims.grad.clone()
    sims.grad = None
    p, q = torch.softmax(sims / 0.1, -1), torch.softmax(judge / 0.1, -1)
    kl = torch.nn.functional.kl_div
    official = 0.5 * (
        kl(torch.log(q + 1e-8), p, reduction="batchmean") + kl(torch.log(p + 1e-8), q, reduction="batchmean")
    )
    official.backward()
    torch.testing.assert_close(ours, sims.grad, rtol=1e-5, atol=1e-6)


def test_world_size_scaling_restores_the_global_gradient() -> None:
    """Two ranks each computing the loss over the gathered batch, with only their own rows carrying
    gradient, times the world size, averaged over ranks (DeepSpeed), equal one rank's gradient."""
    sims, judge = torch.tensor(SIMS), torch.tensor(JUDGE)
    whole = sims.clone().requires_grad_()
    judge_alignment_loss(whole, judge).backward()
    per_rank = []
    for r in range(2):
        mine = sims[r : r + 1].clone().requires_grad_()
        gathered = torch.cat([mine if i == r else sims[i : i + 1] for i in range(2)])
        (2 * judge_alignment_loss(gathered, judge)).backward()
        per_rank.append(mine.grad)
    # Averaging over the 2 ranks: rank r's rows get gradient on rank r only.
    torch.testing.assert_close(torch.cat(per_rank) / 2, whole.grad)
