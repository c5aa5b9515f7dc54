"""MMEB runner: unique items encoded once, the on-disk cache (a second evaluation encodes nothing and
loads no model), and top-k reranking listwise or pairwise (P(Yes) order): by default as the official
eval (an unparsable answer is a miss, a hit is judged by the chosen candidate's content), the lenient
variant (embedder order kept, hit by index) as an option; unparsable answers counted either way."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from unime_assets.evaluation.runner import (
    ModelHandle,
    evaluate_model,
    rerank_subset,
    subset_fingerprint,
    unique_items,
)
from unime_assets.fingerprints import ImageDigests


@pytest.fixture(scope="module")
def eval_rows(settings) -> pl.DataFrame:
    from unime_assets.data.mmeb import load_eval

    return load_eval(settings.eval_root, ["SynColor", "SynCaps_t2i"])


def test_unique_items_and_fingerprint(eval_rows, settings):
    rows = eval_rows.filter(pl.col("subset") == "SynColor")
    uniq = unique_items(rows)
    n_all = rows.height + int(rows["tgt_text"].list.len().sum())
    assert len(uniq) < n_all  # classification rows share their label pool
    assert list(uniq.values()) == list(range(len(uniq)))
    digest = ImageDigests(settings.eval_image_root)
    fp = subset_fingerprint(rows, None, digest)
    assert fp == subset_fingerprint(rows.clone(), None, digest)
    assert fp != subset_fingerprint(rows, 1344, digest)  # another eval setting is not comparable
    assert fp != subset_fingerprint(rows.head(rows.height - 1), None, digest)
    replaced = rows["qry_img_path"][0]  # an image replaced at the same path: its bytes changed
    assert fp != subset_fingerprint(rows, None, lambda p: "new bytes" if p == replaced else digest(p))


def test_second_evaluation_encodes_nothing_and_loads_no_model(tiny_qwen2vl, settings, eval_rows, tmp_path,
                                                               monkeypatch):  # fmt: skip
    cache = tmp_path / "cache"
    first_handle = ModelHandle(tiny_qwen2vl, "embedder")
    first = evaluate_model(first_handle, eval_rows, settings.eval_image_root, image_size=None, batch_size=16,
                           cache_dir=cache)  # fmt: skip
    assert first_handle.loaded
    for name, res in first.items():
        # each unique query and candidate of the subset encoded once, nothing was cached yet
        assert (
            res.encoded == len(unique_items(eval_rows.filter(pl.col("subset") == name))) and res.cached == 0
        )
        assert 0.0 <= res.precision_at_1 <= 1.0 and res.n_rows == len(res.row_scores)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the second evaluation must not encode")

    monkeypatch.setattr("unime_assets.models.encoding.encode_items", no_encoding)
    second_handle = ModelHandle(tiny_qwen2vl, "embedder")
    second = evaluate_model(second_handle, eval_rows, settings.eval_image_root, image_size=None, batch_size=16,
                            cache_dir=cache)  # fmt: skip
    assert not second_handle.loaded
    for name, res in second.items():
        assert res.encoded == 0 and res.cached == first[name].encoded
        assert res.precision_at_1 == first[name].precision_at_1
        for a, b in zip(res.row_scores, first[name].row_scores, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    # Another image size is another namespace: nothing reused (it would have to encode).
    with pytest.raises(AssertionError, match="must not encode"):
        evaluate_model(ModelHandle(tiny_qwen2vl), eval_rows, settings.eval_image_root, image_size=32,
                       batch_size=16, cache_dir=cache)  # fmt: skip


def test_uncached_equals_cached(tiny_qwen2vl, settings, eval_rows, tmp_path):
    rows = eval_rows.filter(pl.col("subset") == "SynCaps_t2i")
    plain = evaluate_model(tiny_qwen2vl, rows, settings.eval_image_root, image_size=None, batch_size=8)
    cached = evaluate_model(tiny_qwen2vl, rows, settings.eval_image_root, image_size=None, batch_size=8,
                            cache_dir=tmp_path)  # fmt: skip
    assert plain["SynCaps_t2i"].precision_at_1 == cached["SynCaps_t2i"].precision_at_1


def _rows(n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "subset": ["S"] * n, "qry_text": [f"q{i}" for i in range(n)], "qry_img_path": [""] * n,
        "tgt_text": [[f"c{i}_{j}" for j in range(4)] for i in range(n)], "tgt_img_path": [[""] * 4] * n,
    })  # fmt: skip


def test_listwise_lenient_unparsable_keeps_embedder_order_and_is_counted(monkeypatch):
    rows = _rows(4)
    # Embedder ranks per row (GT = candidate 0): row0 GT 2nd, row1 GT 1st, row2 GT 3rd, row3 GT outside top-3.
    scores = [np.array([0.8, 0.9, 0.1, 0.0]), np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.5, 0.9, 0.8, 0.1]),
              np.array([0.0, 0.9, 0.8, 0.7])]  # fmt: skip
    answers = ["Ans: (2)", "I cannot tell", "Ans: (7)", "Ans: (1)"]
    seen = {}

    def fake_listwise(model, processor, queries, lists, images, **kwargs):
        seen["lists"] = [[c.text for c in cs] for cs in lists]
        return answers

    monkeypatch.setattr("unime_assets.evaluation.runner.rerank_listwise", fake_listwise)
    fake = type("LM", (), {"model": None, "processor": None})()
    out = rerank_subset(fake, rows, scores, images=None, top_k=3, batch_size=2, mode="listwise",
                        unparsable="embedder_order", hit="index")  # fmt: skip
    assert seen["lists"][0] == ["c0_1", "c0_0", "c0_2"]  # the embedder's top-3, best first
    # row0: (2) picks the GT -> hit; row1: unparsable keeps the embedder's top-1 = GT -> hit;
    # row2: (7) is out of range -> unparsable, embedder's top-1 is not the GT -> miss;
    # row3: the GT is not in the top-3 the reranker saw -> miss whatever it answers.
    assert out.unparsable == 2 and out.precision_at_1 == pytest.approx(0.5) and out.mode == "listwise"
    assert out.orders[0][0] == 0 and out.orders[1] == [0, 3, 2] and out.orders[2] == [1, 2, 0]


def test_listwise_official_unparsable_is_a_miss_and_hits_go_by_content(monkeypatch):
    """The official eval: an answer without a valid "(n)" is a miss even when the embedder's top-1 is
    the GT, and choosing any candidate with the GT's (text, image) is a hit."""
    rows = _rows(4)
    tgt = rows["tgt_text"].to_list()
    tgt[2] = ["gt2", "c2_1", "gt2", "c2_3"]  # row 2: candidate 2 duplicates the ground truth
    rows = rows.with_columns(pl.Series("tgt_text", tgt))
    scores = [np.array([0.8, 0.9, 0.1, 0.0]), np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.5, 0.9, 0.8, 0.1]),
              np.array([0.9, 0.1, 0.2, 0.3])]  # fmt: skip
    # row0: picks the GT; row1: unparsable (embedder top-1 is the GT); row2: picks the duplicate at
    # position 2 of [1, 2, 0]; row3: picks position 2 = candidate 3.
    answers = ["Ans: (2)", "I cannot tell", "Ans: (2)", "Ans: (2)"]
    monkeypatch.setattr("unime_assets.evaluation.runner.rerank_listwise", lambda *a, **k: answers)
    fake = type("LM", (), {"model": None, "processor": None})()
    kw = dict(images=None, top_k=3, batch_size=2, mode="listwise")
    official = rerank_subset(fake, rows, scores, **kw)  # defaults: unparsable="miss", hit="content"
    assert official.hits == [True, False, True, False] and official.precision_at_1 == 0.5
    assert official.unparsable == 1 and official.orders[2][0] == 2
    # Each factor alone: the lenient unparsable rule makes row 1 a hit; the index rule, row 2 a miss.
    assert rerank_subset(fake, rows, scores, unparsable="embedder_order", **kw).hits == [True, True, True, False]
    assert rerank_subset(fake, rows, scores, hit="index", **kw).hits == [True, False, False, False]
    with pytest.raises(ValueError, match="unparsable"):
        rerank_subset(fake, rows, scores, unparsable="skip", **kw)


def test_pairwise_reorders_by_yes_probability(monkeypatch):
    rows = _rows(2)
    scores = [np.array([0.8, 0.9, 0.1, 0.0]), np.array([0.9, 0.1, 0.2, 0.3])]
    probs = [np.array([0.2, 0.7, 0.1]), np.array([0.4, 0.4, 0.9])]

    monkeypatch.setattr("unime_assets.evaluation.runner.rerank_pairwise", lambda *a, **k: probs)
    fake = type("LM", (), {"model": None, "processor": None})()
    out = rerank_subset(fake, rows, scores, images=None, top_k=3, batch_size=2, mode="pairwise")
    # row0 top-3 [1, 0, 2] -> P(Yes) puts candidate 0 first; row1 [0, 3, 2] -> candidate 2 first.
    assert out.orders == [[0, 1, 2], [2, 0, 3]] and out.precision_at_1 == 0.5 and out.unparsable == 0
    with pytest.raises(ValueError, match="rerank mode"):
        rerank_subset(fake, rows, scores, images=None, top_k=3, batch_size=2, mode="pointwise")


def test_rerank_with_the_tiny_reranker_both_modes(tiny_qwen25vl, settings, eval_rows):
    from unime_assets.models.encoding import ImageLoader
    from unime_assets.models.loading import load_model

    rows = eval_rows.filter(pl.col("subset") == "SynColor").head(3)
    scores = [np.linspace(1.0, 0.0, n) for n in rows["tgt_text"].list.len().to_list()]
    lm = load_model(tiny_qwen25vl, role="reranker")
    images = ImageLoader(settings.eval_image_root)
    listwise = rerank_subset(
        lm, rows, scores, images, top_k=3, batch_size=2, mode="listwise", max_new_tokens=4
    )
    pairwise = rerank_subset(lm, rows, scores, images, top_k=3, batch_size=4, mode="pairwise")
    for out in (listwise, pairwise):
        assert out.n_rows == 3 and 0.0 <= out.precision_at_1 <= 1.0
        assert all(sorted(o) == [0, 1, 2] for o in out.orders)
    assert 0 <= listwise.unparsable <= 3


def test_rerank_cache_key_and_roundtrip(tiny_qwen2vl, tiny_qwen25vl, tmp_path):
    from unime_assets.evaluation.runner import RerankOutcome, load_rerank, rerank_cache_key, save_rerank

    rr, emb = ModelHandle(tiny_qwen25vl), ModelHandle(tiny_qwen2vl)
    base = dict(image_size=None, mode="listwise", top_k=10)
    key = rerank_cache_key(rr, emb, "fp", **base)
    assert key == rerank_cache_key(ModelHandle(tiny_qwen25vl), ModelHandle(tiny_qwen2vl), "fp", **base)
    others = [rerank_cache_key(rr, emb, "fp2", **base), rerank_cache_key(rr, emb, "fp", **{**base, "mode": "pairwise"}),
              rerank_cache_key(rr, emb, "fp", **{**base, "top_k": 5}),
              rerank_cache_key(emb, rr, "fp", **base)]  # fmt: skip
    assert key not in others and len(set(others)) == len(others)
    assert not rr.loaded and not emb.loaded  # keys need fingerprints only
    assert load_rerank(tmp_path, key) is None
    out = RerankOutcome(0.5, 1, 2, "listwise", [[0, 2, 1], [1, 0, 2]])
    save_rerank(tmp_path, key, out)
    assert load_rerank(tmp_path, key) == out
