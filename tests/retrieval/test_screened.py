"""The bf16-screened δ search: the same answer as an exact float32 scan, and `auto` picks it only where it pays."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from vectors import unit

from unime_assets.retrieval import exact_filtered_topk, make_index, search_below_positive
from unime_assets.retrieval.screened import (
    BF16_UNIT_ROUNDOFF,
    F32_UNIT_ROUNDOFF,
    ScreenStats,
    screened_filtered_topk,
    torch_filtered_topk,
)
from unime_assets.retrieval.search import resolve_method


def _clustered(n_pool: int, n_q: int, dim: int, seed: int = 0):
    """Tight clusters with near-duplicates and exact duplicates: many candidates within bf16 error of each other."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_pool // 25, dim))
    c = centers[rng.integers(0, len(centers), n_pool)] + 0.3 * rng.standard_normal((n_pool, dim))
    c[::17] = c[1::17][: len(c[::17])] + 1e-4 * rng.standard_normal((len(c[::17]), dim))  # near-duplicates
    c[5::41] = c[6::41][: len(c[5::41])]  # exact duplicates (distinct rows, same vector)
    c = unit(c)
    pos = rng.integers(0, n_pool, n_q)
    q = unit(c[pos] + 0.4 * rng.standard_normal((n_q, dim)))
    return q, c, pos


def _check_equal_to_exact(q, c, pos, ids, k, tol=1e-5):
    """Each query's ids are a top-k of the candidates below δ with its own row excluded, in float64, up to
    float32 rounding: items within tol of δ may go either way, and of the k-th score either way."""
    for i in range(len(q)):
        s = c.astype(np.float64) @ q[i].astype(np.float64)
        delta = float(np.dot(q[i].astype(np.float64), c[pos[i]].astype(np.float64)))
        got = np.array([j for j in ids[i] if j >= 0], dtype=np.int64)
        assert pos[i] not in got and len(set(got.tolist())) == len(got), f"query {i}: own row or repeats"
        assert (s[got] < delta + tol).all(), f"query {i}: a candidate is not below δ"
        sure = np.array([j for j in np.nonzero(s < delta - tol)[0] if j != pos[i]], dtype=np.int64)
        maybe = int(((s < delta + tol).sum()) - 1)
        assert min(k, len(sure)) <= len(got) <= min(k, maybe), f"query {i}: {len(got)} candidates"
        if len(got) == k:  # nothing surely valid left out scores above the weakest kept one
            left = np.setdiff1d(sure, got)
            assert (s[left] <= s[got].min() + tol).all(), f"query {i}: a better candidate was left out"


@pytest.mark.parametrize("dim", [64, 384])
def test_screened_equals_the_exact_scan(dim):
    q, c, pos = _clustered(3000, 200, dim)
    below = np.einsum("ij,ij->i", q, c[pos]).astype(np.float32)
    stats = ScreenStats()
    ids, sims = screened_filtered_topk(c, q, below, pos, 20, query_chunk=64, cand_chunk=700, stats=stats)
    _check_equal_to_exact(q, c, pos, ids, 20)
    ref_ids, ref_sims = exact_filtered_topk(c, q, below, pos, 20)
    # best first like the exact scan: where the sets agree (all but δ-boundary duplicates of the
    # positive), the same scores rank by rank (ids may swap only among equal scores)
    same = np.array([set(a) == set(b) for a, b in zip(ids.tolist(), ref_ids.tolist(), strict=True)])
    assert same.mean() > 0.95
    np.testing.assert_allclose(sims[same], ref_sims[same], atol=1e-5)
    assert stats.screened + stats.fallback == 200 and stats.screened > 150
    assert stats.rescored < 200 * 1000  # the screen rescored a few candidates per query, not the pool
    assert all(pos[i] not in ids[i] for i in range(200)) and (sims[ids >= 0] < np.repeat(below, 20)[(ids >= 0).ravel()]).all()


def test_a_small_rescoring_buffer_gives_the_same_answer(monkeypatch):
    """Rescoring groups rows by how many candidates they need and fills one reused buffer; with room for
    only a few rows per group (many groups, each as wide as its widest row) the answer is unchanged."""
    import unime_assets.retrieval.screened as screened

    q, c, pos = _clustered(3000, 200, 64, seed=3)
    below = np.einsum("ij,ij->i", q, c[pos]).astype(np.float32)
    ids, sims = screened_filtered_topk(c, q, below, pos, 20, query_chunk=64, cand_chunk=700)
    monkeypatch.setattr(screened, "RESCORE_ROWS", 1)  # the buffer then holds one row of `capacity` entries
    small = ScreenStats()
    ids_s, sims_s = screened_filtered_topk(c, q, below, pos, 20, query_chunk=64, cand_chunk=700, stats=small)
    assert small.screened > 150
    np.testing.assert_array_equal(ids_s, ids)
    np.testing.assert_array_equal(sims_s, sims)
    _check_equal_to_exact(q, c, pos, ids_s, 20)


def test_a_full_kept_list_falls_back_to_the_exact_scan():
    q, c, pos = _clustered(2000, 60, 32, seed=1)
    below = np.einsum("ij,ij->i", q, c[pos]).astype(np.float32)
    stats = ScreenStats()
    ids, _ = screened_filtered_topk(c, q, below, pos, 10, capacity=10, stats=stats)  # no room beyond k
    assert stats.fallback > 0
    _check_equal_to_exact(q, c, pos, ids, 10)


def test_queries_with_few_valid_candidates_are_padded():
    c = unit(np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.1]]))
    q = unit(np.array([[1.0, 0.05]]))
    # similarities 0.999 (own row), 0.05, 0.74, -0.99: below δ = 0.75 are rows 2, 1, 3, then nothing
    ids, sims = screened_filtered_topk(c, q, np.array([0.75], np.float32), np.array([0]), 4)
    assert ids[0].tolist() == [2, 1, 3, -1] and np.isneginf(sims[0, 3])
    ids, _ = screened_filtered_topk(c, q, np.array([0.5], np.float32), np.array([0]), 4)
    assert ids[0].tolist() == [1, 3, -1, -1]


def test_the_error_bound_holds():
    """The interval the screen relies on: |q.c - fl(q~.c~ - β) - β| stays within the stated bound."""
    q, c, _ = _clustered(500, 50, 256, seed=2)
    beta = torch.tensor(0.5).to(torch.bfloat16)
    qb = torch.cat([torch.from_numpy(q).bfloat16(), torch.full((50, 1), -float(beta), dtype=torch.bfloat16)], 1)
    cb = torch.cat([torch.from_numpy(c).bfloat16(), torch.ones(500, 1, dtype=torch.bfloat16)], 1)
    x = (qb @ cb.T).float()
    exact = torch.from_numpy(q).double() @ torch.from_numpy(c).double().T - float(beta)
    dq = (torch.from_numpy(q) - qb[:, :-1].float()).norm(dim=1)
    dc = (torch.from_numpy(c) - cb[:, :-1].float()).norm(dim=1)
    e0 = torch.from_numpy(q).norm(dim=1)[:, None] * dc[None] + dq[:, None] * cb[:, :-1].float().norm(dim=1)[None]
    e0 = e0 + 257 * F32_UNIT_ROUNDOFF * 2
    bound = e0 + BF16_UNIT_ROUNDOFF / (1 - BF16_UNIT_ROUNDOFF) * x.abs()
    err = (exact - x.double()).abs()
    assert (err <= bound.double()).all()
    assert err.max() > 1e-4  # bf16 really is approximate: the rescoring matters


def test_search_below_positive_screened_matches_faiss():
    q, c, pos = _clustered(3000, 150, 128, seed=3)
    index = make_index(c, use_gpu=False)
    a = search_below_positive(index, q, c[pos], pos, k=25, method="faiss")
    b = search_below_positive(index, q, c[pos], pos, k=25, method="screened", cand_emb=c)
    assert a.method == "faiss" and b.method == "screened"
    _check_equal_to_exact(q, c, pos, a.ids, 25)
    _check_equal_to_exact(q, c, pos, b.ids, 25)
    # identical sets but where a duplicate of the positive sits exactly at δ (float32 decides either way)
    assert np.mean([set(x) == set(y) for x, y in zip(a.ids.tolist(), b.ids.tolist(), strict=True)]) > 0.95
    with pytest.raises(ValueError, match="needs cand_emb"):
        search_below_positive(index, q, c[pos], pos, k=25, method="screened")
    with pytest.raises(ValueError, match="unknown search method"):
        search_below_positive(index, q, c[pos], pos, k=25, method="annoy")  # type: ignore[arg-type]


def test_auto_scans_exact_cpu_indexes_in_torch_at_large_shapes(monkeypatch):
    import unime_assets.retrieval.search as search

    c = unit(np.random.default_rng(0).standard_normal((100, 1024)))
    flat = make_index(c, use_gpu=False)
    monkeypatch.setattr(search, "TORCH_MIN_WORK", 100 * 1024 * 10)
    monkeypatch.setattr(search, "fast_bf16_matmul", lambda: False)
    assert resolve_method("auto", flat, c, 10) == "torch"
    monkeypatch.setattr(search, "fast_bf16_matmul", lambda: True)  # native bf16: the screened scan
    assert resolve_method("auto", flat, c, 10) == "screened"
    assert resolve_method("auto", flat, c, 9) == "faiss"  # too little work
    assert resolve_method("auto", flat, None, 10) == "faiss"  # no rows to scan
    assert resolve_method("auto", faiss.IndexHNSWFlat(1024, 8), c, 10) == "faiss"  # approximate index
    assert resolve_method("auto", flat, c[:, :256], 10**6) == "faiss"  # small dimension
    assert resolve_method("screened", flat, c, 1) == "screened"


def test_torch_scan_matches_faiss_and_the_exact_scan():
    q, c, pos = _clustered(3000, 150, 128, seed=4)
    index = make_index(c, use_gpu=False)
    a = search_below_positive(index, q, c[pos], pos, k=25, method="faiss")
    t = search_below_positive(index, q, c[pos], pos, k=25, method="torch", cand_emb=c, chunk=64)
    assert t.method == "torch"
    _check_equal_to_exact(q, c, pos, t.ids, 25)
    # both are exact answers; they may differ only where float32 sums in another order split a tie at the
    # k-th score or put a near-duplicate of the positive on the other side of δ
    _check_equal_to_exact(q, c, pos, a.ids, 25)
    assert np.mean([set(x) == set(y) for x, y in zip(a.ids.tolist(), t.ids.tolist(), strict=True)]) > 0.9
    below = np.einsum("ij,ij->i", q, c[pos]).astype(np.float32)
    ids, sims = torch_filtered_topk(c, q, below, pos, 25, query_chunk=50, cand_chunk=700)
    ref_ids, ref_sims = exact_filtered_topk(c, q, below, pos, 25)
    same = np.array([set(x) == set(y) for x, y in zip(ids.tolist(), ref_ids.tolist(), strict=True)])
    assert same.mean() > 0.95
    np.testing.assert_allclose(sims[same], ref_sims[same], atol=1e-5)
