"""Candidate index and pool: global dedup, δ rule, FAISS search equal to brute force, cached encoding."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from vectors import unit

from unime_assets.retrieval import (
    POOL_SCHEMA,
    CandidateIndex,
    PoolResult,
    Retriever,
    build_candidate_index,
    build_candidate_pool,
    build_candidate_table,
    build_index,
    check_same_index,
    default_nlist,
    exact_filtered_topk,
    faiss_num_gpus,
    index_digest,
    make_index,
    pool_frame,
    search_below_positive,
    search_candidate_pool,
    set_search_params,
    to_search_device,
)


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
    c = unit(rng.standard_normal((300, 16)))
    q = unit(rng.standard_normal((40, 16)))
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
    q = unit(rng.standard_normal((1, 8)))
    sims_target = np.linspace(0.99, -0.99, 400)
    basis = unit(rng.standard_normal((400, 8)))
    basis -= (basis @ q[0])[:, None] * q[0]  # orthogonal part
    basis = unit(basis)
    c = unit(sims_target[:, None] * q[0] + np.sqrt(1 - sims_target[:, None] ** 2) * basis)
    pos = np.array([199])
    res = search_below_positive(make_index(c), q, c[pos], pos, k=10)
    assert res.cand_idx[0].tolist() == list(range(200, 210))


def test_query_with_nothing_below_its_positive_gets_no_candidates():
    c = unit(np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]))
    q = unit(np.array([[0.0, -1.0]]))  # similarities: row 0: 0, row 1: -1, row 2: -0.71
    # Positive row 1 (-1) is the least similar row: nothing is strictly below it.
    res = search_below_positive(make_index(c), q, c[[1]], np.array([1]), k=2)
    assert res.cand_idx[0].tolist() == [] and res.lens.tolist() == [0]
    # Positive row 0 (0): both other rows are below it, most similar first.
    res = search_below_positive(make_index(c), q, c[[0]], np.array([0]), k=2)
    assert res.cand_idx[0].tolist() == [2, 1]
    # The expectations tell the δ rule apart: without it (top-k minus the positive) the first query gets
    # rows 0 and 2, which are more similar than its positive.
    assert _brute_force(q, c, np.array([1]), 2) == [[]]
    sims = c @ q[0]
    no_delta = [int(j) for j in np.argsort(-sims, kind="stable") if j != 1][:2]
    assert no_delta == [0, 2] != res.cand_idx[0].tolist()


# --- FAISS indexes and the chunked search ------------------------------------------------------------


def _topk_sets_match(sims_ref: np.ndarray, got_ids: np.ndarray, k: int, tol: float = 1e-5) -> bool:
    """Same top-k set as the float64 reference, up to ties at the k-th score (float32 sums differ)."""
    ref = np.argsort(-sims_ref, kind="stable")[:k]
    if set(ref.tolist()) == set(got_ids.tolist()):
        return True
    kth = sims_ref[ref[-1]]
    diff = set(ref.tolist()) ^ set(got_ids.tolist())
    return all(abs(sims_ref[j] - kth) <= tol for j in diff)


def test_faiss_exact_top50_equals_brute_force():
    rng = np.random.default_rng(2)
    c = unit(rng.standard_normal((2000, 32)))
    q = unit(rng.standard_normal((300, 32)))
    ref = q.astype(np.float64) @ c.astype(np.float64).T
    sims, ids = make_index(c, use_gpu=False).search(q, 50)
    assert all(_topk_sets_match(ref[i], ids[i], 50) for i in range(300))
    np.testing.assert_allclose(sims, np.take_along_axis(ref, ids, 1), atol=1e-5)
    # Through the δ-rule search with the δ rule made inactive: each query's positive is a copy of itself
    # appended to the pool (similarity 1), so the result is the plain top-50 of the other rows.
    pool = np.concatenate([c, q])
    pos_idx = np.arange(2000, 2300)
    res = search_below_positive(make_index(pool, use_gpu=False), q, q, pos_idx, k=50, chunk=64)
    ref_pool = q.astype(np.float64) @ pool.astype(np.float64).T
    ref_pool[np.arange(300), pos_idx] = -np.inf
    assert (res.lens == 50).all()
    assert all(_topk_sets_match(ref_pool[i], res.cand_idx[i], 50) for i in range(300))


def test_brute_force_check_can_fail():
    ref = np.array([0.9, 0.8, 0.7, 0.1])
    assert _topk_sets_match(ref, np.array([0, 1]), 2)
    assert not _topk_sets_match(ref, np.array([0, 3]), 2)


def test_ivf_with_all_lists_is_exact_and_hnsw_recall_is_high():
    rng = np.random.default_rng(3)
    c = unit(rng.standard_normal((3000, 16)))
    q = unit(rng.standard_normal((100, 16)))
    ref = q.astype(np.float64) @ c.astype(np.float64).T
    ivf = build_index(c, "ivf", nlist=20, nprobe=20)
    assert ivf.nprobe == 20 and ivf.ntotal == 3000
    _, ids = ivf.search(q, 50)
    assert all(_topk_sets_match(ref[i], ids[i], 50) for i in range(100))
    assert build_index(c, "ivf").nlist == default_nlist(3000) == 76  # min(4·sqrt(N), N/39)
    hnsw = build_index(c, "hnsw", hnsw_m=16, ef_search=128)
    _, ids = hnsw.search(q, 50)
    truth = np.argsort(-ref, axis=1)[:, :50]
    recall = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(ids.tolist(), truth.tolist(), strict=True)])
    assert recall > 0.95
    set_search_params(hnsw, ef_search=300)
    set_search_params(ivf, nprobe=5)
    assert hnsw.hnsw.efSearch == 300 and ivf.nprobe == 5
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(c, "annoy")  # type: ignore[arg-type]


def test_gpu_requested_without_gpu_faiss_fails_clearly():
    if faiss_num_gpus() > 0:
        pytest.skip("this faiss sees a GPU")
    with pytest.raises(ValueError, match="no GPU"):
        make_index(unit(np.eye(3)), use_gpu=True)
    index, on_gpu = to_search_device(build_index(unit(np.eye(3))), None)
    assert not on_gpu and index.ntotal == 3


def _ramp(n_cands: int = 400, dim: int = 8, seed: int = 1):
    """One query whose similarity to candidate j falls linearly with j (0.99 .. -0.99)."""
    rng = np.random.default_rng(seed)
    q = unit(rng.standard_normal((1, dim)))
    target = np.linspace(0.99, -0.99, n_cands)
    basis = rng.standard_normal((n_cands, dim))
    basis -= (basis @ q[0])[:, None] * q[0]
    basis = unit(basis)
    return q, unit(target[:, None] * q[0] + np.sqrt(1 - target[:, None] ** 2) * basis)


def test_past_max_depth_the_exact_scan_finishes_the_query():
    q, c = _ramp()
    pos = np.array([199])
    index = make_index(c, use_gpu=False)
    deep = search_below_positive(index, q, c[pos], pos, k=10, max_depth=32)  # no cand_emb: deeper index calls
    exact = search_below_positive(index, q, c[pos], pos, k=10, max_depth=32, cand_emb=c)
    assert deep.cand_idx[0].tolist() == exact.cand_idx[0].tolist() == list(range(200, 210))
    assert exact.n_exact == 1 and deep.n_exact == 0 and exact.n_deepened == 1
    np.testing.assert_allclose(exact.cand_sims[0], deep.cand_sims[0], atol=1e-5)


def test_exact_filtered_topk_matches_brute_force():
    rng = np.random.default_rng(4)
    c = unit(rng.standard_normal((500, 8)))
    q = unit(rng.standard_normal((30, 8)))
    below = rng.uniform(-0.2, 0.6, 30).astype(np.float32)
    exclude = rng.integers(0, 500, 30)
    ids, sims = exact_filtered_topk(c, q, below, exclude, 7, cand_chunk=64, query_chunk=8)
    for i in range(30):
        s = c @ q[i]
        keep = [j for j in np.argsort(-s, kind="stable") if s[j] < below[i] and j != exclude[i]][:7]
        got = [j for j in ids[i] if j >= 0]
        assert got == keep
        assert np.all(np.diff(sims[i][: len(got)]) <= 0)


class SpyIndex:
    """Wraps a FAISS index and records the shape of every search."""

    def __init__(self, index):
        self.index, self.ntotal, self.calls = index, index.ntotal, []

    def search(self, x, k):
        self.calls.append((len(x), k))
        return self.index.search(x, k)


def test_search_memory_does_not_grow_with_queries():
    rng = np.random.default_rng(5)
    c = unit(rng.standard_normal((3000, 16)))
    q = unit(rng.standard_normal((1000, 16)))
    # each positive sits at a random rank < 600: many queries need deeper searches, some past max_depth
    ranks = np.argsort(-(q @ c.T), axis=1)
    pos_idx = ranks[np.arange(1000), rng.integers(0, 600, 1000)]
    spy = SpyIndex(make_index(c, use_gpu=False))
    chunk, max_depth = 128, 128
    res = search_below_positive(spy, q, c[pos_idx], pos_idx, k=10, chunk=chunk, max_depth=max_depth)
    assert res.n_deepened > 500
    # at most `chunk` queries per call, and never more than chunk x max_depth results held at once
    assert max(n for n, _ in spy.calls) <= chunk
    assert max(n * d for n, d in spy.calls) <= chunk * max_depth
    whole = search_below_positive(make_index(c, use_gpu=False), q, c[pos_idx], pos_idx, k=10, chunk=4096)
    assert (res.ids == whole.ids).all() and (res.lens == whole.lens).all()


def test_pool_frame_columns_and_types():
    res = PoolResult(
        ids=np.array([[3, 1, -1], [-1, -1, -1]]),
        sims=np.array([[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32),
        lens=np.array([2, 0]),
        pos_sim=np.array([0.75, 0.1], dtype=np.float32),
    )
    df = pool_frame(["p0", "p1"], np.array([7, 8]), res)
    assert df.columns == ["pair_id", "pos_cand_id", "cand_ids", "cand_sims", "pos_sim"]
    assert df.schema == pl.Schema(POOL_SCHEMA)
    assert df["cand_ids"].to_list() == [[3, 1], []]
    assert df["cand_sims"].to_list() == [[0.5, 0.25], []]


# --- the global index and per-partition search (retriever stand-in) ---------------------------------


class FakeRetriever(Retriever):
    """Deterministic 'embeddings' from each item's text and image bytes; counts what it encodes."""

    dtype = "float32"

    def __init__(self, fingerprint: str = "fake-model", dim: int = 16):
        self.path, self.fingerprint, self.dim = Path("fake"), fingerprint, dim
        self._lm, self.n_forward_items = None, 0

    def encode(self, items, image_root, **_):
        self.n_forward_items += len(items)
        out = []
        for it in items:
            data = it.text.encode() + (Path(image_root, it.image).read_bytes() if it.image else b"")
            seed = int.from_bytes(
                hashlib.blake2b(data + self.fingerprint.encode(), digest_size=8).digest(), "little"
            )
            out.append(np.random.default_rng(seed).standard_normal(self.dim))
        return unit(np.stack(out))


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.png").write_bytes(f"image {i}".encode())
    rows = []
    for i in range(60):
        sub = "A" if i < 30 else "B"
        img = f"{i % 4}.png" if i % 3 == 0 else ""
        # labels repeat (classification-style), so the pool is smaller than the number of rows
        rows.append({"pair_id": f"p{i}", "subset": sub, "qry": f"query {i}", "qry_image_path": img,
                     "pos_text": f"label {i % 25}", "pos_image_path": "" if i % 2 else f"{i % 4}.png"})  # fmt: skip
    return pl.DataFrame(rows), root, tmp_path


def test_build_index_then_search_partitions(toy):
    train, root, tmp = toy
    fake = FakeRetriever()
    ci = build_candidate_index(train, fake, root, tmp / "index", cache_dir=tmp / "cache", progress=False)
    n_cands = build_candidate_table(train)[0].height
    assert ci.candidates.columns == ["cand_id", "cand_key", "text", "image_path"]
    assert ci.stats["n_encoded"] == n_cands == fake.n_forward_items and ci.stats["n_cached"] == 0
    for name in ("candidates.parquet", "candidate_embeddings.npy", "index.faiss", "index.json"):
        assert (tmp / "index" / name).is_file()
    loaded = CandidateIndex.load(tmp / "index")
    assert loaded.index.ntotal == n_cands and loaded.kind == "flat"
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), ci.embeddings)

    pools = []
    for sub in ("A", "B"):
        part = train.filter(pl.col("subset") == sub)
        pool, stats = search_candidate_pool(
            part, tmp / "index", fake, root, cache_dir=tmp / "cache", top_k=5, progress=False
        )
        assert pool.columns == ["pair_id", "pos_cand_id", "cand_ids", "cand_sims", "pos_sim", "index_digest"]
        assert set(pool["index_digest"]) == {index_digest(ci.candidates)}  # the index its cand_ids number
        assert pool["pair_id"].to_list() == part["pair_id"].to_list()
        assert stats["n_encoded"] == 30 and stats["queries"] == 30
        pools.append(pool)
    pool = pl.concat(pools)
    # the positive's row is the candidate with the same (text, image)
    cands = ci.candidates
    for row, pos_id in zip(train.iter_rows(named=True), pool["pos_cand_id"], strict=True):
        assert (cands["text"][pos_id], cands["image_path"][pos_id]) == (
            row["pos_text"],
            row["pos_image_path"],
        )
    # δ rule and exclusion of the positive, retrieval order, and equal to one unpartitioned search
    for ids, sims, pos_sim, pos_id in pool.select(
        "cand_ids", "cand_sims", "pos_sim", "pos_cand_id"
    ).iter_rows():
        assert all(s < pos_sim for s in sims) and pos_id not in ids and sims == sorted(sims, reverse=True)
    whole, _ = search_candidate_pool(train, ci, fake, root, cache_dir=tmp / "cache", top_k=5, progress=False)
    assert whole.equals(pool)


def test_unchanged_inputs_encode_nothing_and_a_changed_image_only_its_items(toy):
    train, root, tmp = toy
    fake = FakeRetriever()
    kw = dict(cache_dir=tmp / "cache", progress=False)
    build_candidate_index(train, fake, root, tmp / "i1", **kw)
    search_candidate_pool(train, tmp / "i1", fake, root, top_k=5, **kw)
    encoded = fake.n_forward_items

    # a fresh index folder (no reuse of the index itself): every embedding comes from the cache
    ci = build_candidate_index(train, fake, root, tmp / "i2", **kw)
    _, stats = search_candidate_pool(train, ci, fake, root, top_k=5, **kw)
    assert fake.n_forward_items == encoded and ci.stats["n_encoded"] == 0 and stats["n_encoded"] == 0
    assert ci.stats["n_cached"] == ci.candidates.height and stats["n_cached"] == 60
    # the same folder again: the index is reused as is
    again = build_candidate_index(train, fake, root, tmp / "i2", **kw)
    assert again.stats["reused"] and fake.n_forward_items == encoded

    # rewrite one image: only the candidates / queries showing it are encoded again
    (root / "2.png").write_bytes(b"a new picture")
    ci3 = build_candidate_index(train, fake, root, tmp / "i2", **kw)
    n_cand_2 = int((ci3.candidates["image_path"] == "2.png").sum())
    assert not ci3.stats["reused"] and ci3.stats["n_encoded"] == n_cand_2 > 0
    _, stats = search_candidate_pool(train, ci3, fake, root, top_k=5, **kw)
    assert stats["n_encoded"] == int((train["qry_image_path"] == "2.png").sum()) > 0

    # another model reuses nothing, and the index it did not build refuses its queries
    other = FakeRetriever("another-model")
    ci4 = build_candidate_index(train, other, root, tmp / "i4", **kw)
    assert ci4.stats["n_encoded"] == ci4.candidates.height and ci4.stats["n_cached"] == 0
    with pytest.raises(ValueError, match="another retriever"):
        search_candidate_pool(train, ci4, fake, root, top_k=5, **kw)


def test_positive_missing_from_the_index_names_the_pair(toy):
    train, root, tmp = toy
    fake = FakeRetriever()
    ci = build_candidate_index(train.head(10), fake, root, tmp / "index", cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="p10"):
        search_candidate_pool(train, ci, fake, root, cache_dir=None, top_k=5, progress=False)


def test_inconsistent_index_folder_is_detected_and_rebuilt(toy):
    train, root, tmp = toy
    fake = FakeRetriever()
    build_candidate_index(train, fake, root, tmp / "index", cache_dir=None, progress=False)
    build_candidate_table(train.head(5))[0].write_parquet(
        tmp / "index" / "candidates.parquet"
    )  # torn rewrite
    with pytest.raises(ValueError, match="inconsistent"):
        CandidateIndex.load(tmp / "index")
    ci = build_candidate_index(train, fake, root, tmp / "index", cache_dir=None, progress=False)
    assert (
        not ci.stats["reused"]
        and CandidateIndex.load(tmp / "index").candidates.height == ci.candidates.height
    )


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_kinds_round_trip(toy, kind):
    train, root, tmp = toy
    fake = FakeRetriever()
    ci = build_candidate_index(train, fake, root, tmp / kind, cache_dir=None, index_kind=kind, progress=False)
    loaded = CandidateIndex.load(tmp / kind)
    assert loaded.kind == kind and loaded.index.ntotal == ci.candidates.height
    pool, stats = search_candidate_pool(train, loaded, fake, root, cache_dir=None, top_k=5, nprobe=64,
                                        ef_search=64, progress=False)  # fmt: skip
    exact_ci = build_candidate_index(train, fake, root, tmp / "flat", cache_dir=None, progress=False)
    exact, _ = search_candidate_pool(train, exact_ci, fake, root, cache_dir=None, top_k=5, progress=False)
    assert stats["index_kind"] == kind
    assert pool["cand_ids"].to_list() == exact["cand_ids"].to_list()  # tiny pool: all lists probed


# --- the real encoder on the tiny checkpoint ----------------------------------------------------------


def test_tiny_retriever_cache_skips_the_model(tmp_path, settings, tiny_qwen2vl, monkeypatch):
    from unime_assets.data.mmeb import load_train
    from unime_assets.models import encoding

    calls: list[int] = []
    real = encoding.encode_items

    def counting(model, processor, items, *args, **kwargs):
        calls.append(len(items))
        return real(model, processor, items, *args, **kwargs)

    monkeypatch.setattr(encoding, "encode_items", counting)
    train = load_train(settings.train_root, settings.train_subset_names)
    root, kw = settings.train_image_root, dict(cache_dir=tmp_path / "cache", progress=False, batch_size=16)
    ci = build_candidate_index(train, tiny_qwen2vl, root, tmp_path / "index", **kw)
    pool, stats = search_candidate_pool(train, tmp_path / "index", tiny_qwen2vl, root, top_k=8, **kw)
    n_queries = len(set(zip(train["qry"], train["qry_image_path"], strict=True)))
    assert sum(calls) == ci.candidates.height + n_queries == ci.stats["n_encoded"] + stats["n_encoded"]
    np.testing.assert_allclose(np.linalg.norm(ci.embeddings, axis=1), 1.0, atol=1e-5)

    calls.clear()
    retriever = Retriever(tiny_qwen2vl)
    ci2 = build_candidate_index(train, retriever, root, tmp_path / "index2", **kw)
    pool2, stats2 = search_candidate_pool(train, ci2, retriever, root, top_k=8, **kw)
    assert calls == [] and retriever._lm is None  # warm cache: the model is not even loaded
    assert pool2["cand_ids"].to_list() == pool["cand_ids"].to_list()
    # the one-call form still used by the unpartitioned asset gives the same pool
    legacy = build_candidate_pool(train, retriever, root, top_k=8, **kw)
    assert legacy.pool.equals(pool.drop("index_digest")) and calls == []
    assert legacy.query_emb.shape == (train.height, ci.embeddings.shape[1])
    np.testing.assert_array_equal(legacy.cand_emb, ci.embeddings)

    # a changed checkpoint (here only its config) is another model: nothing is reused
    other = tmp_path / "other-ckpt"
    shutil.copytree(tiny_qwen2vl, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "note": "retrained"}))
    ci3 = build_candidate_index(train, other, root, tmp_path / "index3", **kw)
    assert ci3.stats["n_cached"] == 0 and sum(calls) == ci3.candidates.height


def test_a_table_of_cand_ids_is_checked_against_the_index_that_numbers_them():
    cands = pl.DataFrame({"cand_id": [0, 1], "cand_key": ["a", "b"]})
    rebuilt = pl.DataFrame({"cand_id": [0, 1, 2], "cand_key": ["a", "c", "b"]})  # "b" is now id 2
    pool = pl.DataFrame({"pair_id": ["p"], "cand_ids": [[1]], "index_digest": [index_digest(cands)]})
    check_same_index(pool, cands, "candidate_pool[A]")
    with pytest.raises(ValueError, match=r"candidate_pool\[A\] was built on another candidate index"):
        check_same_index(pool, rebuilt, "candidate_pool[A]")
    with pytest.raises(ValueError, match=r"mined_negatives\[A\] predates candidate-index digests"):
        check_same_index(pool.drop("index_digest"), cands, "mined_negatives[A]")
    check_same_index(pool.clear(), rebuilt, "candidate_pool[A]")  # an empty table numbers nothing
