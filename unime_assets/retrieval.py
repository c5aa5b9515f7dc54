"""Stage 1: the global candidate index and FAISS top-K retrieval with the paper's δ rule.

The pool is every unique (text, image) target across all training subsets (UniME-V2's released
negatives cross dataset boundaries, so the pool is global). It is built once by
`build_candidate_index` (candidates table, retriever embeddings, FAISS index, under one folder);
each training subset's queries are then searched against it by `search_candidate_pool`.

For each query the candidates at least as similar as the query's own positive are dropped
(δ = sim(q, positive), read off the paper's Fig. 2), the positive itself (and its exact duplicates,
the same pool row after deduplication) is excluded, and the K most similar of the rest are kept in
retrieval order. Retriever embeddings go through `embedding_cache`, so unchanged items are never
encoded twice.

Index kinds: `flat` (IndexFlatIP, exact, the default), `ivf` (IndexIVFFlat, nlist / nprobe) and
`hnsw` (IndexHNSWFlat, M / efSearch) for pools of millions. Flat and IVF indexes move to all GPUs
when faiss sees one (faiss-gpu) unless `use_gpu=False`. Queries are searched in chunks, and only
the queries that need a deeper search are searched again, so peak memory does not grow with the
number of queries (benchmarks/candidate_pool.py measures it against torch matmul + topk).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unime_assets.openblas import pin_openblas_core

pin_openblas_core()  # before faiss loads its bundled OpenBLAS (see unime_assets/openblas.py)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from unime_assets.embedding_cache import (  # noqa: E402
    CacheStats,
    EmbeddingCache,
    item_keys,
    model_fingerprint,
    namespace,
)
from unime_assets.io import atomic_path  # noqa: E402

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")

CANDIDATES_FILE = "candidates.parquet"
EMBEDDINGS_FILE = "candidate_embeddings.npy"
INDEX_FILE = "index.faiss"
META_FILE = "index.json"  # written last: its presence marks a complete index folder

# GPU FAISS answers at most k = 2048 per search; deeper searches take the exact numpy path.
MAX_SEARCH_DEPTH = 2048

POOL_SCHEMA = {
    "pair_id": pl.String,
    "pos_cand_id": pl.Int64,
    "cand_ids": pl.List(pl.Int64),
    "cand_sims": pl.List(pl.Float32),
    "pos_sim": pl.Float32,
}


def candidate_key(text: str, image: str) -> str:
    return hashlib.blake2b(f"{text}\x1f{image}".encode(), digest_size=8).hexdigest()


def build_candidate_table(train: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """Unique positives as the pool: (candidates[cand_id, cand_key, text, image_path], pos index per row)."""
    keys = [candidate_key(t, p) for t, p in zip(train["pos_text"], train["pos_image_path"], strict=True)]
    first: dict[str, int] = {}
    texts, images = [], []
    pos_idx = np.empty(len(keys), dtype=np.int64)
    for row, (key, t, p) in enumerate(zip(keys, train["pos_text"], train["pos_image_path"], strict=True)):
        if key not in first:
            first[key] = len(texts)
            texts.append(t)
            images.append(p)
        pos_idx[row] = first[key]
    cands = pl.DataFrame(
        {
            "cand_id": np.arange(len(texts), dtype=np.int64),
            "cand_key": list(first),
            "text": texts,
            "image_path": images,
        },
        schema_overrides={"cand_key": pl.String, "text": pl.String, "image_path": pl.String},
    )
    return cands, pos_idx


# --- FAISS indexes --------------------------------------------------------------------------------


def faiss_num_gpus() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _want_gpu(use_gpu: bool | None) -> bool:
    n = faiss_num_gpus()
    if use_gpu and n == 0:
        raise ValueError(
            "use_gpu=True but this faiss build sees no GPU (install faiss-gpu, see the [gpu] extra)"
        )
    return n > 0 if use_gpu is None else bool(use_gpu)


def default_nlist(n: int) -> int:
    # FAISS guidance: ~4·sqrt(N) lists, and k-means wants >= 39 training points per list.
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(
    cand_emb: np.ndarray,
    kind: IndexKind = "flat",
    *,
    nlist: int | None = None,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
    use_gpu: bool | None = None,
    seed: int = 0,
) -> faiss.Index:
    """A CPU inner-product index over `cand_emb` (cosine on normalised rows), ready to write to disk.

    flat: exact (IndexFlatIP). ivf: IndexIVFFlat with `nlist` lists (default ~4·sqrt(N)) searched
    with `nprobe`; its k-means runs on a GPU when `use_gpu` allows. hnsw: IndexHNSWFlat with `hnsw_m`
    links, `ef_construction` and `ef_search` (CPU only: FAISS has no GPU HNSW).
    """
    x = np.ascontiguousarray(cand_emb, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"build_index: expected a non-empty (N, D) array, got shape {x.shape}")
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index
    if kind == "ivf":
        lists = min(nlist or default_nlist(n), n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        # k-means on a seeded sample: 256 points per list is plenty and keeps training bounded.
        sample = x
        if n > 256 * lists:
            sample = x[np.sort(np.random.default_rng(seed).choice(n, 256 * lists, replace=False))]
        index.cp.seed = seed
        if _want_gpu(use_gpu):
            gpu = faiss.index_cpu_to_all_gpus(index)
            gpu.train(sample)
            gpu.add(x)
            index = faiss.index_gpu_to_cpu(gpu)
        else:
            index.train(sample)
            index.add(x)
        index.nprobe = min(nprobe, lists)
        return index
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        index.add(x)
        return index
    raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Override IVF `nprobe` / HNSW `efSearch` on a CPU index (before moving it to a GPU)."""
    if nprobe is not None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = min(nprobe, ivf.nlist)
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search


def to_search_device(index: faiss.Index, use_gpu: bool | None = None) -> tuple[faiss.Index, bool]:
    """(index on all GPUs when wanted and supported, whether it is on a GPU). HNSW stays on the CPU."""
    if not _want_gpu(use_gpu) or hasattr(index, "hnsw"):
        return index, False
    return faiss.index_cpu_to_all_gpus(index), True  # copies nprobe of IVF indexes


def make_index(
    cand_emb: np.ndarray, use_gpu: bool | None = None, *, kind: IndexKind = "flat", **params
) -> faiss.Index:
    """An index ready to search: `build_index` then, when faiss sees a GPU (or `use_gpu`), moved there."""
    return to_search_device(build_index(cand_emb, kind, use_gpu=use_gpu, **params), use_gpu)[0]


# --- search with the δ rule -----------------------------------------------------------------------


@dataclass
class PoolResult:
    ids: np.ndarray  # (n, k) int64 candidate rows in retrieval order, -1 past `lens`
    sims: np.ndarray  # (n, k) float32
    lens: np.ndarray  # (n,) how many of the k are filled
    pos_sim: np.ndarray  # (n,) float32 similarity of each query to its positive
    n_deepened: int = 0  # queries that needed more than the first search depth
    n_exact: int = 0  # queries finished by the exact numpy scan (past MAX_SEARCH_DEPTH)

    @property
    def cand_idx(self) -> list[np.ndarray]:
        return [row[:n] for row, n in zip(self.ids, self.lens, strict=True)]

    @property
    def cand_sims(self) -> list[np.ndarray]:
        return [row[:n] for row, n in zip(self.sims, self.lens, strict=True)]


def _write_first_k(keep, ids, sims, rows, k, out: PoolResult) -> None:
    """Copy each row's first k kept entries (in retrieval order) into out[rows]."""
    rank = np.cumsum(keep, axis=1)
    r, c = np.nonzero(keep & (rank <= k))
    out.ids[rows[r], rank[r, c] - 1] = ids[r, c]
    out.sims[rows[r], rank[r, c] - 1] = sims[r, c]
    out.lens[rows] = np.minimum(keep.sum(axis=1), k)


def exact_filtered_topk(
    cand_emb: np.ndarray,
    query_emb: np.ndarray,
    below: np.ndarray,
    exclude: np.ndarray,
    k: int,
    *,
    cand_chunk: int | None = None,
    query_chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product among candidates with sim < below[i] and row != exclude[i].

    Scans candidates in chunks with a running top-k, so memory is query_chunk x cand_chunk whatever
    the pool size (cand_emb may be a memory map; by default a chunk is ~256 MB of float32 rows).
    Returns ((n, k) ids padded with -1, (n, k) sims).
    """
    n = len(query_emb)
    cand_chunk = cand_chunk or max(1024, (64 << 20) // max(cand_emb.shape[1], 1))
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_sims = np.full((n, k), -np.inf, dtype=np.float32)
    for qs in range(0, n, query_chunk):
        q = np.asarray(query_emb[qs : qs + query_chunk], dtype=np.float32)
        thr, exc = below[qs : qs + query_chunk, None], exclude[qs : qs + query_chunk, None]
        best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        best_i = np.full((len(q), k), -1, dtype=np.int64)
        for cs in range(0, len(cand_emb), cand_chunk):
            c = np.asarray(cand_emb[cs : cs + cand_chunk], dtype=np.float32)
            s = q @ c.T
            ids = np.arange(cs, cs + len(c), dtype=np.int64)
            s[(s >= thr) | (ids[None, :] == exc)] = -np.inf
            all_s = np.concatenate([best_s, s], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
            top = (
                np.argpartition(-all_s, k - 1, axis=1)[:, :k] if all_s.shape[1] > k else np.argsort(-all_s, 1)
            )
            best_s = np.take_along_axis(all_s, top, 1)
            best_i = np.take_along_axis(all_i, top, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
        best_i[~np.isfinite(best_s)] = -1
        out_ids[qs : qs + len(q)], out_sims[qs : qs + len(q)] = best_i, best_s
    return out_ids, out_sims


def search_below_positive(
    index: faiss.Index,
    query_emb: np.ndarray,
    pos_emb: np.ndarray,
    pos_idx: np.ndarray,
    k: int = 50,
    *,
    chunk: int = 4096,
    max_depth: int = MAX_SEARCH_DEPTH,
    cand_emb: np.ndarray | None = None,
) -> PoolResult:
    """Top-k candidates strictly less similar than each query's positive, its own row excluded.

    Searches k + 16 and doubles the depth only for queries that ran short because many candidates
    outranked their positive, so the result equals filtering the full ranking. Queries go in chunks
    and a deeper search only takes the short ones, so memory is about chunk x max_depth whatever
    the number of queries. Past `max_depth` the remaining queries are finished by an exact scan of
    `cand_emb` when given (GPU FAISS cannot search deeper than 2048), else by deeper index searches
    in smaller batches.
    """
    n, total = len(query_emb), index.ntotal
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    pos_idx = np.asarray(pos_idx, dtype=np.int64)
    pos_sim = np.einsum("ij,ij->i", q, np.asarray(pos_emb, dtype=np.float32)).astype(np.float32)
    out = PoolResult(
        np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32), np.zeros(n, np.int64), pos_sim
    )
    budget = chunk * max(max_depth, k + 16)  # result entries held at once
    for start in range(0, n, chunk):
        pending = np.arange(start, min(start + chunk, n))
        depth = min(total, k + 16)
        first = True
        while len(pending):
            if not first and depth > max_depth and cand_emb is not None:
                ids, sims = exact_filtered_topk(cand_emb, q[pending], pos_sim[pending], pos_idx[pending], k)
                _write_first_k(ids >= 0, ids, sims, pending, k, out)
                out.n_exact += len(pending)
                break
            short: list[np.ndarray] = []
            step = max(1, budget // max(depth, 1))
            for s in range(0, len(pending), step):
                rows = pending[s : s + step]
                sims, ids = index.search(q[rows], depth)
                # δ rule: keep only candidates strictly below the positive's similarity; the positive
                # itself (and any exact duplicate, the same pool row) is excluded by index as well.
                keep = (ids >= 0) & (sims < pos_sim[rows, None]) & (ids != pos_idx[rows, None])
                done = (keep.sum(axis=1) >= k) | (depth >= total)
                _write_first_k(keep[done], ids[done], sims[done], rows[done], k, out)
                short.append(rows[~done])
            pending = np.concatenate(short) if short else pending[:0]
            if first:
                out.n_deepened += len(pending)
                first = False
            # Double, but stop once at max_depth (the deepest GPU search) before the exact scan.
            depth = min(total, max_depth if depth < max_depth < depth * 2 else depth * 2)
    return out


def pool_frame(pair_ids: Sequence[str] | pl.Series, pos_idx: np.ndarray, res: PoolResult) -> pl.DataFrame:
    """The `candidate_pool` table: pair_id, pos_cand_id, cand_ids, cand_sims, pos_sim."""
    k = res.ids.shape[1] if res.ids.ndim == 2 else 0
    df = pl.DataFrame(
        {
            "pair_id": pl.Series(pair_ids, dtype=pl.String),
            "pos_cand_id": np.asarray(pos_idx, dtype=np.int64),
            "cand_ids": pl.Series(res.ids.reshape(-1, k), dtype=pl.Array(pl.Int64, k)),
            "cand_sims": pl.Series(res.sims.reshape(-1, k), dtype=pl.Array(pl.Float32, k)),
            "n": res.lens,
            "pos_sim": res.pos_sim.astype(np.float32),
        }
    )
    return df.select(
        "pair_id",
        "pos_cand_id",
        pl.col("cand_ids").cast(pl.List(pl.Int64)).list.head(pl.col("n")),
        pl.col("cand_sims").cast(pl.List(pl.Float32)).list.head(pl.col("n")),
        "pos_sim",
    )


# --- encoding through the cache -------------------------------------------------------------------


class Retriever:
    """The retriever checkpoint, loaded on first use: a warm cache never loads the model."""

    def __init__(self, path: str | os.PathLike):
        from unime_assets.models.loading import check_checkpoint_dir

        self.path = check_checkpoint_dir(path, "retriever")
        self.fingerprint = model_fingerprint(self.path)
        self._lm = None
        self.n_forward_items = 0  # items actually encoded by this object

    @property
    def dtype(self) -> str:
        from unime_assets.models.loading import default_dtype, pick_device

        return str(default_dtype(pick_device()))

    def encode(
        self, items: Sequence, image_root: str | os.PathLike, *, batch_size: int, desc: str, progress: bool
    ):
        from unime_assets.models import encoding
        from unime_assets.models.loading import load_model

        if self._lm is None:
            self._lm = load_model(self.path, role="retriever")
        lm = self._lm
        self.n_forward_items += len(items)
        images = encoding.ImageLoader(image_root)
        return encoding.encode_items(
            lm.model,
            lm.processor,
            items,
            images,
            lm.image_token,
            batch_size=batch_size,
            desc=desc,
            progress=progress,
        )


def as_retriever(retriever: str | os.PathLike | Retriever) -> Retriever:
    """A checkpoint path or an existing `Retriever` (shared so the model loads at most once)."""
    return retriever if isinstance(retriever, Retriever) else Retriever(retriever)


def encode_cached(
    items: Sequence,
    retriever: Retriever,
    image_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None,
    batch_size: int = 64,
    desc: str = "encode",
    progress: bool = True,
) -> tuple[np.ndarray, CacheStats]:
    """Retriever embeddings of `items` (models.encoding.Item); only items missing from the cache are encoded.

    cache_dir=None disables the cache (everything is encoded, duplicates once).
    """

    def compute(positions: list[int]) -> np.ndarray:
        sub = [items[i] for i in positions]
        return retriever.encode(sub, image_root, batch_size=batch_size, desc=desc, progress=progress)

    keys = item_keys(items, image_root)
    if cache_dir is None:
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        emb = compute(list(first.values()))
        where = {key: j for j, key in enumerate(first)}
        out = emb[[where[key] for key in keys]] if len(first) != len(keys) else emb
        return out, CacheStats(len(keys), len(first), 0, len(first))
    cache = EmbeddingCache(cache_dir, namespace(retriever.fingerprint, dtype=retriever.dtype))
    return cache.get_or_compute(keys, compute)


def _items(texts: Sequence[str], images: Sequence[str]) -> list:
    from unime_assets.models.encoding import Item

    return [Item(t, p) for t, p in zip(texts, images, strict=True)]


# --- the global candidate index -------------------------------------------------------------------


def _digest(values: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for v in values:
        h.update(v.encode())
        h.update(b"\x1f")
    return h.hexdigest()


@dataclass
class CandidateIndex:
    """The global pool: candidates table, their embeddings (row i = cand_id i) and a CPU FAISS index."""

    candidates: pl.DataFrame  # cand_id, cand_key, text, image_path
    embeddings: np.ndarray  # (N, D) float32, possibly a read-only memory map
    index: faiss.Index
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def out_dir(self) -> Path | None:
        """The folder the index was written to / read from."""
        return self.path

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "flat")

    @property
    def stats(self) -> dict[str, Any]:
        return self.meta.get("stats", {})

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True) -> CandidateIndex:
        """Read a folder written by `build_candidate_index`, checking its files belong together."""
        p = Path(path)
        if not (p / META_FILE).is_file():
            raise FileNotFoundError(f"{p / META_FILE} not found: materialize candidate_index first")
        meta = json.loads((p / META_FILE).read_text())
        cands = pl.read_parquet(p / CANDIDATES_FILE)
        emb = np.load(p / EMBEDDINGS_FILE, mmap_mode="r" if mmap else None)
        # A flat index is mapped, not read: partitions searching in parallel share one copy in the page cache.
        flags = faiss.IO_FLAG_MMAP_IFC if mmap and meta.get("kind") == "flat" else 0
        index = faiss.read_index(str(p / INDEX_FILE), flags)
        sizes = {
            "meta": meta["n_candidates"],
            "table": cands.height,
            "embeddings": emb.shape[0],
            "index": index.ntotal,
        }
        if len(set(sizes.values())) != 1 or meta["cand_keys_digest"] != _digest(cands["cand_key"].to_list()):
            raise ValueError(f"candidate index {p} is inconsistent ({sizes}): re-materialize candidate_index")
        return cls(cands, emb, index, meta, p)

    def searcher(
        self, *, use_gpu: bool | None = None, nprobe: int | None = None, ef_search: int | None = None
    ) -> tuple[faiss.Index, bool]:
        """(index ready to search, on GPU?) with optional IVF nprobe / HNSW efSearch overrides."""
        set_search_params(self.index, nprobe=nprobe, ef_search=ef_search)
        return to_search_device(self.index, use_gpu)


def _write_index_dir(out_dir: Path, ci: CandidateIndex) -> None:
    # Each file is atomic; the meta file goes last and carries the sizes and key digest that
    # `CandidateIndex.load` checks, so a crash midway is detected rather than read as a mix.
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)
    with atomic_path(out_dir / CANDIDATES_FILE) as tmp:
        ci.candidates.write_parquet(tmp)
    with atomic_path(out_dir / EMBEDDINGS_FILE) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(ci.embeddings, dtype=np.float32))
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        faiss.write_index(ci.index, str(tmp))
    with atomic_path(out_dir / META_FILE) as tmp:
        tmp.write_text(json.dumps(ci.meta, indent=2, sort_keys=True))


def _check_cache_outside(cache_dir: str | os.PathLike | None, out_dir: Path) -> None:
    if cache_dir is not None and Path(cache_dir).resolve() == out_dir.resolve():
        raise ValueError(f"cache_dir and out_dir must differ (both {out_dir})")


def build_candidate_index(
    train_all: pl.DataFrame,
    retriever_path: str | os.PathLike | Retriever,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None,
    index_kind: IndexKind = "flat",
    batch_size: int = 64,
    use_gpu: bool | None = None,
    progress: bool = True,
    nlist: int | None = None,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
    seed: int = 0,
) -> CandidateIndex:
    """Unique (pos_text, pos_image_path) targets of all training subsets, embedded and indexed.

    `retriever_path` is a checkpoint directory or a `Retriever` (shared with `search_candidate_pool`
    so the model loads at most once, and not at all when every embedding is cached).

    Writes `candidates.parquet`, `candidate_embeddings.npy`, `index.faiss` (CPU form) and
    `index.json` (kind, parameters, retriever fingerprint, stats) under `out_dir`. Embeddings come
    from the cache under `cache_dir` where present (None: no cache). When `out_dir` already holds an
    index of the same items, retriever and parameters, it is reused as is (`stats["reused"]`).
    """
    if train_all.is_empty():
        raise ValueError("candidate index: the training table is empty")
    if index_kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {index_kind!r}; expected one of {INDEX_KINDS}")
    out = Path(out_dir)
    _check_cache_outside(cache_dir, out)
    t0 = time.perf_counter()
    candidates, _ = build_candidate_table(train_all)
    retriever = as_retriever(retriever_path)
    items = _items(candidates["text"], candidates["image_path"])
    params = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_construction": ef_construction,
              "ef_search": ef_search, "seed": seed}  # fmt: skip
    # What the index depends on: the items (image stats included), the retriever and the parameters.
    identity = {"kind": index_kind, "params": params, "retriever_fingerprint": retriever.fingerprint,
                "encoding_namespace": namespace(retriever.fingerprint, dtype=retriever.dtype),
                "items_digest": _digest(item_keys(items, image_root))}  # fmt: skip
    if (out / META_FILE).is_file():
        # An unreadable or inconsistent previous index is simply rebuilt (faiss raises RuntimeError).
        with contextlib.suppress(OSError, ValueError, KeyError, RuntimeError):
            old = CandidateIndex.load(out)
            if all(old.meta.get(key) == value for key, value in identity.items()):
                old.meta["stats"] = {**old.meta.get("stats", {}), "reused": True, "n_encoded": 0}
                return old
    emb, cstats = encode_cached(items, retriever, image_root, cache_dir=cache_dir, batch_size=batch_size,
                                desc="candidates", progress=progress)  # fmt: skip
    t1 = time.perf_counter()
    index = build_index(emb, index_kind, use_gpu=use_gpu, **params)
    t2 = time.perf_counter()
    stats = {
        "n_candidates": candidates.height,
        "dim": int(emb.shape[1]),
        "n_encoded": cstats.n_encoded,
        "n_cached": cstats.n_cached,
        "index_kind": index_kind,
        "nlist": int(faiss.try_extract_index_ivf(index).nlist) if index_kind == "ivf" else None,
        "encode_seconds": round(t1 - t0, 3),
        "index_seconds": round(t2 - t1, 3),
        "reused": False,
    }
    meta = {**identity, "format": 1, "n_candidates": candidates.height, "dim": int(emb.shape[1]),
            "cand_keys_digest": _digest(candidates["cand_key"].to_list()), "stats": stats}  # fmt: skip
    ci = CandidateIndex(candidates, emb, index, meta, out)
    _write_index_dir(out, ci)
    return ci


# --- one partition's queries against the global index ---------------------------------------------


def _positive_rows(train_part: pl.DataFrame, candidates: pl.DataFrame) -> np.ndarray:
    keys = [
        candidate_key(t, p) for t, p in zip(train_part["pos_text"], train_part["pos_image_path"], strict=True)
    ]
    lookup = dict(zip(candidates["cand_key"].to_list(), candidates["cand_id"].to_list(), strict=True))
    rows = np.fromiter((lookup.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
    if (rows < 0).any():
        missing = train_part["pair_id"].filter(pl.Series(rows < 0)).to_list()
        raise ValueError(
            f"candidate pool: {len(missing)} positives are not in the candidate index (e.g. pair_id "
            f"{missing[:5]}); the index was built from other training data: re-materialize candidate_index"
        )
    return rows


def _search_partition(
    train_part: pl.DataFrame,
    ci: CandidateIndex,
    retriever: Retriever,
    image_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None,
    top_k: int,
    batch_size: int,
    chunk: int,
    use_gpu: bool | None,
    nprobe: int | None,
    ef_search: int | None,
    progress: bool,
) -> tuple[pl.DataFrame, dict[str, Any], np.ndarray]:
    built_with = ci.meta.get("retriever_fingerprint")
    if built_with is not None and built_with != retriever.fingerprint:
        raise ValueError(
            f"candidate index {ci.path} was built with another retriever checkpoint than {retriever.path}: "
            "re-materialize candidate_index"
        )
    if train_part.is_empty():
        empty = pl.DataFrame(schema=POOL_SCHEMA)
        return (
            empty,
            {"queries": 0, "pool_size": ci.candidates.height, "n_encoded": 0, "n_cached": 0},
            np.empty(0),
        )
    pos_idx = _positive_rows(train_part, ci.candidates)
    queries = _items(train_part["qry"], train_part["qry_image_path"])
    q_emb, cstats = encode_cached(queries, retriever, image_root, cache_dir=cache_dir, batch_size=batch_size,
                                  desc="queries", progress=progress)  # fmt: skip
    index, on_gpu = ci.searcher(use_gpu=use_gpu, nprobe=nprobe, ef_search=ef_search)
    t0 = time.perf_counter()
    pos_emb = np.asarray(ci.embeddings[pos_idx], dtype=np.float32)
    res = search_below_positive(index, q_emb, pos_emb, pos_idx, k=top_k, chunk=chunk, cand_emb=ci.embeddings)
    pool = pool_frame(train_part["pair_id"], pos_idx, res)
    stats = {
        "queries": pool.height,
        "pool_size": ci.candidates.height,
        "top_k": top_k,
        "mean_candidates": float(res.lens.mean()),
        "min_candidates": int(res.lens.min()),
        "short_queries": int((res.lens < top_k).sum()),
        "mean_pos_sim": float(res.pos_sim.mean()),
        "n_encoded": cstats.n_encoded,
        "n_cached": cstats.n_cached,
        "n_deepened": res.n_deepened,
        "n_exact_fallback": res.n_exact,
        "index_kind": ci.kind,
        "gpu": on_gpu,
        "search_seconds": round(time.perf_counter() - t0, 3),
    }
    return pool, stats, q_emb


def search_candidate_pool(
    train_part: pl.DataFrame,
    index: CandidateIndex | str | os.PathLike,
    retriever_path: str | os.PathLike | Retriever,
    image_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None,
    top_k: int = 50,
    batch_size: int = 64,
    chunk: int = 4096,
    use_gpu: bool | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    progress: bool = True,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One partition's queries against the global index: (pool, stats).

    pool: `pair_id, pos_cand_id, cand_ids (list[i64]), cand_sims (list[f32]), pos_sim`, rows in
    `train_part` order; per query the `top_k` most similar candidates strictly below its positive's
    similarity (δ rule), the positive's own row excluded, in retrieval order. The positive is found
    by its (text, image) key in the index's candidates table; a missing one is an error naming the
    pair_id. Query embeddings come from the cache under `cache_dir` where present.
    """
    ci = index if isinstance(index, CandidateIndex) else CandidateIndex.load(index)
    pool, stats, _ = _search_partition(
        train_part, ci, as_retriever(retriever_path), image_root, cache_dir=cache_dir, top_k=top_k,
        batch_size=batch_size, chunk=chunk, use_gpu=use_gpu, nprobe=nprobe, ef_search=ef_search, progress=progress,
    )  # fmt: skip
    return pool, stats


# --- the unpartitioned pool (all training queries at once) ----------------------------------------


@dataclass
class CandidatePool:
    candidates: pl.DataFrame  # cand_id, cand_key, text, image_path
    pool: pl.DataFrame  # pair_id, pos_cand_id, cand_ids, cand_sims, pos_sim
    query_emb: np.ndarray
    cand_emb: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def build_candidate_pool(
    train: pl.DataFrame,
    retriever_path: str | os.PathLike | Retriever,
    image_root: str | os.PathLike,
    *,
    top_k: int = 50,
    batch_size: int = 64,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    index_kind: IndexKind = "flat",
    use_gpu: bool | None = None,
) -> CandidatePool:
    """Index every target of `train` and search all its queries: `build_candidate_index` + `search_candidate_pool`.

    With out_dir=None the index folder is temporary.
    """
    import tempfile

    retriever = as_retriever(retriever_path)
    with tempfile.TemporaryDirectory(prefix="candidate_index.") as tmp:
        ci = build_candidate_index(
            train, retriever, image_root, out_dir or tmp, cache_dir=cache_dir, index_kind=index_kind,
            batch_size=batch_size, use_gpu=use_gpu, progress=progress,
        )  # fmt: skip
        pool, stats, q_emb = _search_partition(
            train, ci, retriever, image_root, cache_dir=cache_dir, top_k=top_k, batch_size=batch_size,
            chunk=4096, use_gpu=use_gpu, nprobe=None, ef_search=None, progress=progress,
        )  # fmt: skip
        cand_emb = np.array(ci.embeddings, dtype=np.float32)  # detached from the temporary folder
    return CandidatePool(ci.candidates, pool, q_emb, cand_emb, {**ci.stats, **stats})
