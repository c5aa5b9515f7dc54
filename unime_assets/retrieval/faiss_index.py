"""FAISS indexes over the candidate embeddings: exact (flat), IVF and HNSW, on GPU when faiss sees one.

Index kinds: `flat` (IndexFlatIP, exact, the default), `ivf` (IndexIVFFlat, nlist / nprobe) and
`hnsw` (IndexHNSWFlat, M / efSearch) for pools of millions. Flat and IVF indexes move to all GPUs
when faiss sees one (faiss-gpu) unless `use_gpu=False`.
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")

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

