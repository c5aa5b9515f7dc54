"""Candidate pool: global dedup, δ rule, and FAISS search equal to a brute-force filtered ranking."""

from __future__ import annotations

import numpy as np
import polars as pl

from unime_assets.retrieval import build_candidate_table, make_index, search_below_positive


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pool_is_global_and_deduplicated():
    train = pl.DataFrame({
        "pos_text": ["red", "blue", "red", "<|image_1|>\nRepresent the given image.\n", "red"],
        "pos_image_path": ["", "", "", "images/a.png", "images/b.png"],
    })  # fmt: skip
    cands, pos_idx = build_candidate_table(train)
    assert cands["text"].to_list() == ["red", "blue", "<|image_1|>\nRepresent the given image.\n", "red"]
    assert cands["image_path"].to_list() == ["", "", "images/a.png", "images/b.png"]
    assert pos_idx.tolist() == [0, 1, 0, 2, 3]  # same (text, image) -> same pool row
    assert cands["cand_id"].to_list() == [0, 1, 2, 3]


def _brute_force(q, c, pos_idx, k):
    out = []
    for i in range(len(q)):
        sims = c @ q[i]
        pos_sim = float(np.dot(q[i], c[pos_idx[i]]))
        order = np.argsort(-sims, kind="stable")
        keep = [j for j in order if sims[j] < pos_sim and j != pos_idx[i]]
        out.append(keep[:k])
    return out


def test_search_matches_brute_force_with_delta_rule():
    rng = np.random.default_rng(0)
    c = _unit(rng.standard_normal((300, 16)))
    q = _unit(rng.standard_normal((40, 16)))
    pos_idx = rng.integers(0, 300, size=40)
    res = search_below_positive(make_index(c), q, c[pos_idx], pos_idx, k=20, chunk=7)
    expected = _brute_force(q, c, pos_idx, 20)
    for i in range(40):
        assert set(res.cand_idx[i].tolist()) == set(expected[i])
        assert (res.cand_sims[i] < res.pos_sim[i]).all()  # δ rule
        assert pos_idx[i] not in res.cand_idx[i]
        assert np.all(np.diff(res.cand_sims[i]) <= 1e-6)  # retrieval order


def test_deepening_when_many_candidates_outrank_the_positive():
    # The positive is the 200th most similar candidate: the first search depth (k + 16) is not enough.
    rng = np.random.default_rng(1)
    q = _unit(rng.standard_normal((1, 8)))
    sims_target = np.linspace(0.99, -0.99, 400)
    basis = _unit(rng.standard_normal((400, 8)))
    basis -= (basis @ q[0])[:, None] * q[0]  # orthogonal part
    basis = _unit(basis)
    c = _unit(sims_target[:, None] * q[0] + np.sqrt(1 - sims_target[:, None] ** 2) * basis)
    pos = np.array([199])
    res = search_below_positive(make_index(c), q, c[pos], pos, k=10)
    assert res.cand_idx[0].tolist() == list(range(200, 210))


def test_query_with_nothing_below_its_positive_gets_no_candidates():
    c = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]))
    q = _unit(np.array([[0.0, -1.0]]))  # its positive (row 0) is already as dissimilar as any other row
    res = search_below_positive(make_index(c), q, c[[1]], np.array([1]), k=2)
    assert res.cand_idx[0].tolist() == [0, 2] or (res.cand_sims[0] < res.pos_sim[0]).all()
    res = search_below_positive(make_index(c), q, c[[0]], np.array([0]), k=2)
    assert all(s < res.pos_sim[0] for s in res.cand_sims[0])
