"""Top-K search with the paper's δ rule: per query, only candidates strictly less similar than its own positive.

δ = sim(q, positive), read off the paper's Fig. 2: candidates at least as similar as the positive are
dropped, the positive itself (and its exact duplicates, the same pool row after deduplication) is
excluded, and the K most similar of the rest are kept in retrieval order. Queries are searched in
chunks and only the queries that need a deeper search are searched again, so peak memory does not
grow with the number of queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import polars as pl

from unime_assets.retrieval.screened import (
    ScreenStats,
    fast_bf16_matmul,
    screened_filtered_topk,
    torch_filtered_topk,
)

# GPU FAISS answers at most k = 2048 per search; deeper searches take the exact numpy path.
MAX_SEARCH_DEPTH = 2048
# `method="auto"` scans in torch (bf16-screened where the CPU has native bf16) from this much work on
# (queries x pool x dim multiply-adds) and this dimension on; below, FAISS is as fast or faster.
TORCH_MIN_WORK = 10**11
TORCH_MIN_DIM = 512

SearchMethod = Literal["auto", "faiss", "torch", "screened"]

POOL_SCHEMA = {
    "pair_id": pl.String,
    "pos_cand_id": pl.Int64,
    "cand_ids": pl.List(pl.Int64),
    "cand_sims": pl.List(pl.Float32),
    "pos_sim": pl.Float32,
}

@dataclass
class PoolResult:
    ids: np.ndarray  # (n, k) int64 candidate rows in retrieval order, -1 past `lens`
    sims: np.ndarray  # (n, k) float32
    lens: np.ndarray  # (n,) how many of the k are filled
    pos_sim: np.ndarray  # (n,) float32 similarity of each query to its positive
    n_deepened: int = 0  # queries that needed more than the first search depth
    n_exact: int = 0  # queries finished by the exact numpy scan (past MAX_SEARCH_DEPTH)
    method: str = "faiss"  # which search answered: faiss (index + deepening), torch or screened (exact scans)

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
    method: SearchMethod = "auto",
) -> PoolResult:
    """Top-k candidates strictly less similar than each query's positive, its own row excluded.

    Searches k + 16 and doubles the depth only for queries that ran short because many candidates
    outranked their positive, so the result equals filtering the full ranking. Queries go in chunks
    and a deeper search only takes the short ones, so memory is about chunk x max_depth whatever
    the number of queries. Past `max_depth` the remaining queries are finished by an exact scan of
    `cand_emb` when given (GPU FAISS cannot search deeper than 2048), else by deeper index searches
    in smaller batches.

    `method`: `faiss` as above; `torch` scans `cand_emb` once in float32 with the δ mask applied
    inside the scan (no deepening passes); `screened` scores every candidate in bf16 and rescores the
    few that can matter in float32 (`retrieval.screened`; exact). Both need `cand_emb` and give the
    same result as faiss; the index is then not searched. `auto`, for an exact CPU index at large
    shapes (`TORCH_MIN_WORK`, `TORCH_MIN_DIM`), picks `screened` on a CPU with native bf16 and `torch`
    elsewhere, else `faiss` (GPU, IVF, HNSW, small shapes). Measured at 10K x 100K, dim 3584
    (benchmarks/candidate_pool.py, README): screened 1.7-1.9x less CPU than a float32 matmul + topk,
    the `torch` scan and FAISS's search + deepening 1.03-1.14x more.
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
    how = resolve_method(method, index, cand_emb, n)
    if how in ("torch", "screened"):
        if cand_emb is None:
            raise ValueError(f"search method {how!r} needs cand_emb (the index's rows)")
        st = ScreenStats()
        if how == "torch":
            ids, sims = torch_filtered_topk(cand_emb, q, pos_sim, pos_idx, k, query_chunk=chunk)
        else:
            ids, sims = screened_filtered_topk(cand_emb, q, pos_sim, pos_idx, k, stats=st)
        _write_first_k(ids >= 0, ids, sims, np.arange(n), k, out)
        out.method, out.n_exact = how, st.fallback
        return out
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


def resolve_method(method: SearchMethod, index, cand_emb: np.ndarray | None, n_queries: int) -> str:
    """`faiss`, `torch` or `screened` for this call (see `search_below_positive`)."""
    if method not in ("auto", "faiss", "torch", "screened"):
        raise ValueError(f"unknown search method {method!r}; expected auto, faiss, torch or screened")
    if method != "auto":
        return method
    exact_cpu = isinstance(index, faiss.IndexFlat)  # GPU and approximate indexes are not IndexFlat
    dim = cand_emb.shape[1] if cand_emb is not None else 0
    big = n_queries * index.ntotal * dim >= TORCH_MIN_WORK and dim >= TORCH_MIN_DIM
    if cand_emb is None or not exact_cpu or not big:
        return "faiss"
    return "screened" if fast_bf16_matmul() else "torch"


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

