"""Embedding cache: nothing re-encoded when unchanged, only changed items re-encoded, no reuse across models."""

from __future__ import annotations

import os

import numpy as np
import pytest

from unime_assets.models.encoding import Item
from unime_assets.retrieval.embedding_cache import EmbeddingCache, image_digests, item_keys, namespace


class Encoder:
    """Stands in for the model: a vector per key, and a record of what it was asked to encode."""

    def __init__(self, dim: int = 8):
        self.dim, self.calls = dim, []

    def vec(self, key: str) -> np.ndarray:
        seed = int.from_bytes(key.encode()[:8].ljust(8, b"\0"), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def on(self, keys: list[str]):
        """The `compute` callback for one get_or_compute(keys, ...) call (positions index `keys`)."""

        def compute(positions: list[int]) -> np.ndarray:
            self.calls.append([keys[i] for i in positions])
            return np.stack([self.vec(keys[i]) for i in positions])

        return compute

    @property
    def n_encoded(self) -> int:
        return sum(map(len, self.calls))


def test_second_call_encodes_nothing_and_returns_the_same(tmp_path):
    keys = [f"k{i}" for i in range(20)]
    cache = EmbeddingCache(tmp_path, "ns")
    enc = Encoder()
    first, stats = cache.get_or_compute(keys, enc.on(keys))
    assert (stats.n_encoded, stats.n_cached) == (20, 0) and enc.n_encoded == 20
    np.testing.assert_array_equal(first, np.stack([enc.vec(k) for k in keys]))
    again, stats = EmbeddingCache(tmp_path, "ns").get_or_compute(
        keys, enc.on(keys)
    )  # a fresh object: read from disk
    assert (stats.n_encoded, stats.n_cached) == (0, 20) and enc.n_encoded == 20
    np.testing.assert_array_equal(again, first)


def test_only_new_keys_are_encoded_duplicates_once_order_kept(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns")
    cache.get_or_compute(["a", "b", "c"], Encoder().on(["a", "b", "c"]))
    keys = ["c", "x", "a", "x", "y"]
    enc = Encoder()
    out, stats = cache.get_or_compute(keys, enc.on(keys))
    assert enc.calls == [["x", "y"]]  # x once although asked twice
    assert (stats.n_items, stats.n_unique, stats.n_cached, stats.n_encoded) == (5, 4, 2, 2)
    np.testing.assert_array_equal(out, np.stack([enc.vec(k) for k in keys]))


def test_namespaces_do_not_share(tmp_path):
    keys = ["a", "b"]
    EmbeddingCache(tmp_path, namespace("model-1", dtype="float32")).get_or_compute(keys, Encoder().on(keys))
    enc = Encoder()
    other = EmbeddingCache(tmp_path, namespace("model-2", dtype="float32"))
    assert other.get_or_compute(keys, enc.on(keys))[1].n_encoded == 2 and enc.n_encoded == 2
    # precision and encoding version are part of the namespace too
    assert namespace("m", dtype="float32") != namespace("m", dtype="bfloat16")
    assert namespace("m", dtype="float32") != namespace("m", dtype="float32", version="other")


def test_shards_are_merged_and_values_survive(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", max_shards=3)
    all_keys = [f"k{i}" for i in range(12)]
    enc = Encoder()
    for i in range(0, 12, 2):  # six appends of two keys each
        cache.get_or_compute(all_keys[i : i + 2], enc.on(all_keys[i : i + 2]))
        assert cache.n_shards() <= 3
    assert len(cache) == 12 and len(list(cache.dir.glob("shard-*.npy"))) == cache.n_shards()
    out, stats = cache.get_or_compute(all_keys, enc.on(all_keys))
    assert stats.n_encoded == 0
    np.testing.assert_array_equal(out, np.stack([enc.vec(k) for k in all_keys]))


def test_compaction_waits_for_readers(tmp_path):
    pytest.importorskip("fcntl")
    cache = EmbeddingCache(tmp_path, "ns", max_shards=8)
    for k in "abc":
        cache.get_or_compute([k], Encoder().on([k]))
    with cache._lock(exclusive=False):  # another process reading
        assert cache.compact() is False and cache.n_shards() == 3
    assert cache.compact(full=True) is True and cache.n_shards() == 1


def test_compaction_leaves_the_big_shard_alone(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", max_shards=4)
    enc = Encoder()
    big = [f"big{i}" for i in range(50)]
    cache.get_or_compute(big, enc.on(big))
    (big_file,) = cache.dir.glob("shard-*.npy")
    for i in range(6):
        cache.get_or_compute([f"s{i}"], enc.on([f"s{i}"]))
    assert big_file.exists() and cache.n_shards() <= 4  # the small ones were merged, the big one kept
    keys = big + [f"s{i}" for i in range(6)]
    out, stats = cache.get_or_compute(keys, enc.on(keys))
    assert stats.n_encoded == 0
    np.testing.assert_array_equal(out, np.stack([enc.vec(k) for k in keys]))


def test_item_keys_follow_text_and_image_content(tmp_path):
    root = tmp_path / "img"
    (root / "d").mkdir(parents=True)
    img = root / "d" / "a.png"
    img.write_bytes(b"one")
    (root / "d" / "copy.png").write_bytes(b"one")
    items = [Item("q", "d/a.png"), Item("q", ""), Item("q2", "d/a.png"), Item("q", "d/copy.png")]
    k1 = item_keys(items, image_digests(root))
    assert len(set(k1[:3])) == 3 and item_keys(items, image_digests(root)) == k1
    assert k1[3] == k1[0]  # the same bytes under another path: the same embedding
    img.write_bytes(b"three")  # rewritten image
    k2 = item_keys(items, image_digests(root))
    assert k2[0] != k1[0] and k2[1] == k1[1] and k2[2] != k1[2]
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: same key
    assert item_keys(items, image_digests(root))[0] == k2[0]
    with pytest.raises(FileNotFoundError):
        item_keys([Item("q", "d/missing.png")], image_digests(root))


def test_image_digests_persist_next_to_the_cache(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    (root / "a.png").write_bytes(b"one")
    cache_dir = tmp_path / "cache"
    first = item_keys([Item("q", "a.png")], image_digests(root, cache_dir))
    assert (cache_dir / "image-digests.parquet").is_file()
    assert item_keys([Item("q", "a.png")], image_digests(root, cache_dir)) == first


def test_a_killed_encoding_keeps_the_batches_it_wrote(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns")
    keys = [f"k{i}" for i in range(10)]
    enc, calls = Encoder(), {"n": 0}

    def dies_on_third_batch(positions: list[int]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return enc.on(keys)(positions)

    with pytest.raises(RuntimeError, match="killed"):
        cache.get_or_compute(keys, dies_on_third_batch, write_every=3)
    assert len(cache) == 6  # two batches of three were stored before the crash
    again = Encoder()
    out, stats = cache.get_or_compute(keys, again.on(keys), write_every=3)
    assert stats.n_encoded == 4 and again.n_encoded == 4
    np.testing.assert_array_equal(out, np.stack([enc.vec(k) for k in keys]))


def test_bad_compute_output_is_rejected(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns")
    with pytest.raises(ValueError, match="shape"):
        cache.get_or_compute(["a", "b"], lambda pos: np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="no keys"):
        cache.get_or_compute([], lambda pos: np.zeros((0, 4), np.float32))
