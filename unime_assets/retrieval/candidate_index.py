"""The global candidate index: candidates table, retriever embeddings and a FAISS index in one folder.

The pool is every unique (text, image) target across all training subsets (UniME-V2's released
negatives cross dataset boundaries, so the pool is global). It is built once and searched by every
training subset's partition (`retrieval/pool.py`). Files are written atomically, the manifest last.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl

from unime_assets.data.candidates import build_candidate_table
from unime_assets.fingerprints import hash_fields
from unime_assets.io import atomic_path
from unime_assets.retrieval.embedding_cache import image_digests, item_keys, namespace
from unime_assets.retrieval.encoder import Retriever, as_retriever, encode_cached, items_of
from unime_assets.retrieval.faiss_index import (
    INDEX_KINDS,
    IndexKind,
    build_index,
    set_search_params,
    to_search_device,
)

CANDIDATES_FILE = "candidates.parquet"
EMBEDDINGS_FILE = "candidate_embeddings.npy"
INDEX_FILE = "index.faiss"
META_FILE = "index.json"  # written last: its presence marks a complete index folder

def _digest(values: Sequence[str]) -> str:
    return hash_fields("values", *values)[:32]


def index_digest(candidates: pl.DataFrame) -> str:
    """Identity of the cand_id numbering: a digest of the candidates' keys in cand_id order. Tables that
    store cand_ids (candidate pools, mined negatives) carry it, so a table built on an older index is
    detected instead of read with ids that now name other candidates."""
    return _digest(candidates["cand_key"].to_list())


INDEX_DIGEST = "index_digest"  # the column that carries it


def check_same_index(table: pl.DataFrame, candidates: pl.DataFrame | str, name: str) -> None:
    """Raise naming `name` (e.g. "candidate_pool[SynColor]") when `table` was built on another index
    than `candidates` (the current one's table, or its digest): rebuilding the index renumbers cand_ids,
    so its ids would silently name other candidates."""
    if table.is_empty():
        return
    if INDEX_DIGEST not in table.columns:
        raise ValueError(f"{name} predates candidate-index digests (no {INDEX_DIGEST} column): re-materialize it")
    current = candidates if isinstance(candidates, str) else index_digest(candidates)
    stored = set(table[INDEX_DIGEST].unique().to_list())
    if stored != {current}:
        raise ValueError(
            f"{name} was built on another candidate index than the current one (its cand_ids number other "
            f"candidates since candidate_index was rebuilt): re-materialize it from candidate_pool on"
        )


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
        if len(set(sizes.values())) != 1 or meta["cand_keys_digest"] != index_digest(cands):
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
    items = items_of(candidates["text"], candidates["image_path"])
    params = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_construction": ef_construction,
              "ef_search": ef_search, "seed": seed}  # fmt: skip
    # What the index depends on: the items (image stats included), the retriever and the parameters.
    identity = {"kind": index_kind, "params": params, "retriever_fingerprint": retriever.fingerprint,
                "encoding_namespace": namespace(retriever.fingerprint, dtype=retriever.dtype),
                "items_digest": _digest(item_keys(items, image_digests(image_root, cache_dir)))}  # fmt: skip
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
            "cand_keys_digest": index_digest(candidates), "stats": stats}  # fmt: skip
    ci = CandidateIndex(candidates, emb, index, meta, out)
    _write_index_dir(out, ci)
    return ci

