"""Exact δ-filtered top-k scans in torch: a float32 scan, and one with a bf16 screening pass.

`torch_filtered_topk` is the plain scan (q @ pool.T per block, the δ mask, a running top-k).
`screened_filtered_topk` gives the same result from a bf16 pass (twice the matmul rate of float32 on
CPUs with AVX512-BF16 or AMX) plus float32 rescoring of the few candidates that can matter; measured
(benchmarks/candidate_pool.py, 10K x 100K at dim 3584) it takes 1/1.86 (one thread) to 1/1.7 (two) of
the CPU time of a float32 matmul + topk, so `search_below_positive` uses it by default on such CPUs
at large shapes.

What makes the screen exact is a rigorous interval around every bf16 score. The query gets one extra
coordinate -β (β = its δ rounded to bf16, the candidates a 1 there), so the kernel returns
x = fl(q~.c~ - β), small near the decisions, and for y = q.c - β:

    |y - x| <= |q|.|c - c~| + |q - q~|.|c~|        (input rounding, Cauchy-Schwarz, norms per row)
             + (d + 1) 2^-24 (|q~|.|c~| + |β|)     (float32 accumulation, recursive-sum bound)
             + 2^-8 |x| / (1 - 2^-8)                (the bf16 output rounding)

so every candidate has y_lo <= y <= y_hi. A candidate is surely valid when y_hi < δ - β (so q.c < δ),
possibly valid when y_lo < δ - β. With t the k-th best y_lo among surely valid candidates, k valid
candidates have y >= t, so every member of the exact top-k has y_hi >= t. The screen keeps, per query,
the `capacity` possibly valid candidates with the largest y_hi and rescores them in float32; when the
list is full down to t (a dense neighbourhood, or fewer than k sure candidates) the query goes to the
exact float32 scan instead. The result equals filtering an exact float32 ranking, up to float32
rounding of scores within ~1e-6 of the k-th score or of δ (summation order differs between kernels).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from unime_assets.openblas import cpu_flags

BF16_UNIT_ROUNDOFF = 2.0**-8
F32_UNIT_ROUNDOFF = 2.0**-24
RESCORE_ROWS = 8192  # candidate rows gathered at once for float32 rescoring (117 MB at dim 3584)


def fast_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@dataclass
class ScreenStats:
    screened: int = 0  # queries answered by the screen + float32 rescoring
    fallback: int = 0  # queries sent to the exact float32 scan (kept list full)
    rescored: int = 0  # candidates rescored in float32, all queries


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """float32 tensor over x without a copy where possible (a read-only memory map is only read here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(x, dtype=np.float32))


def _exact_scan(pool: torch.Tensor, q: torch.Tensor, below: torch.Tensor, exclude: torch.Tensor, k: int,
                chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The float32 scan: q @ pool.T per pool chunk, the δ mask, a running top-k (best first, -1 padded).

    Each block's scores go into one reused buffer and are masked in place, and only the block's own
    top-k is merged into the running one: a fresh (queries x chunk) matrix per block and a merge over
    the whole block each cost about as much as the matmul's last fifth."""
    best_v = torch.full((len(q), k), -torch.inf)
    best_i = torch.full((len(q), k), -1, dtype=torch.long)
    rows = torch.arange(len(q))
    buf = torch.empty(len(q) * min(chunk, len(pool)))
    for s in range(0, len(pool), chunk):
        block = pool[s : s + chunk]
        x = torch.matmul(q, block.T, out=buf[: len(q) * len(block)].view(len(q), len(block)))
        x.masked_fill_(x >= below[:, None], -torch.inf)  # δ rule
        own = (exclude >= s) & (exclude < s + len(block))
        x[rows[own], exclude[own] - s] = -torch.inf
        v, i = x.topk(min(k, len(block)), dim=1)
        top = torch.cat([best_v, v], 1).topk(k, dim=1)
        best_i = torch.cat([best_i, i + s], 1).gather(1, top.indices)
        best_v = top.values
    best_i[~torch.isfinite(best_v)] = -1
    return best_i, best_v


def torch_filtered_topk(
    cand_emb: np.ndarray, query_emb: np.ndarray, below: np.ndarray, exclude: np.ndarray, k: int,
    *, query_chunk: int = 2048, cand_chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Exact float32 top-k below δ in one pass over the pool (torch matmul, multi-threaded): the contract
    of `search.exact_filtered_topk`, memory query_chunk x cand_chunk whatever the pool size."""
    pool, q = _as_tensor(cand_emb), _as_tensor(query_emb)
    thr = torch.from_numpy(np.asarray(below, dtype=np.float32))
    exc = torch.from_numpy(np.asarray(exclude, dtype=np.int64))
    ids = np.full((len(q), k), -1, dtype=np.int64)
    sims = np.full((len(q), k), -np.inf, dtype=np.float32)
    for s in range(0, len(q), query_chunk):
        i, v = _exact_scan(pool, q[s : s + query_chunk], thr[s : s + query_chunk], exc[s : s + query_chunk], k,
                           cand_chunk)  # fmt: skip
        ids[s : s + len(i)], sims[s : s + len(i)] = i.numpy(), v.numpy()
    return ids, sims


def _bf16_rows(
    x: np.ndarray, extra: float | torch.Tensor, scratch: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bf16 rows with `extra` appended as a last column, |x - bf16(x)| per row, |bf16(x)| per row).

    `scratch`, float32 of at least x's size, is reused for the intermediates (fresh ones for every
    pool block cost about as much in page faults as the arithmetic)."""
    t = _as_tensor(x)
    out = torch.empty((len(t), t.shape[1] + 1), dtype=torch.bfloat16)
    out[:, :-1] = t
    out[:, -1] = extra
    bf = scratch.view(-1)[: t.numel()].view(t.shape) if scratch is not None else torch.empty(t.shape)
    bf.copy_(out[:, :-1])
    bf_norm = bf.norm(dim=1)
    return out, torch.sub(t, bf, out=bf).norm(dim=1), bf_norm


def _to_bf16(x: torch.Tensor, *, up: bool) -> torch.Tensor:
    """x rounded to bf16 upwards (up) or downwards: comparisons against it stay on the safe side."""
    b = x.to(torch.bfloat16)
    away = torch.full_like(b, torch.inf if up else -torch.inf)
    wrong = b.float() < x if up else b.float() > x
    return torch.where(wrong, torch.nextafter(b, away), b)


def _kth_sure_lo(lo: torch.Tensor, hi: torch.Tensor, margin: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the k-th largest lo among entries surely valid (hi < margin); -inf when fewer than k."""
    sure_lo = torch.where(hi < margin[:, None], lo, torch.tensor(-torch.inf))
    if sure_lo.shape[1] < k:
        return torch.full((len(lo),), -torch.inf)
    return sure_lo.topk(k, dim=1).values[:, -1]


def _floor(keep_v: torch.Tensor, e0: torch.Tensor, margin: torch.Tensor, u: float, k: int) -> torch.Tensor:
    """x^ below which hi(x^) = x^ + e0 + u|x^| < t, the current k-th sure lo: such entries never matter."""
    err = e0[:, None] + u * keep_v.abs()
    t = _kth_sure_lo(keep_v - err, keep_v + err, margin, k)
    low = t - e0
    floor = torch.where(low >= 0, low / (1 + u), low / (1 - u)) - 1e-7
    # Fewer than k sure entries in a full list: the query goes to the exact scan, stop collecting.
    floor = torch.where(torch.isfinite(t), floor, torch.where(torch.isfinite(keep_v[:, -1]), torch.inf, -torch.inf))
    return _to_bf16(floor, up=False)


def screened_filtered_topk(
    cand_emb: np.ndarray,
    query_emb: np.ndarray,
    below: np.ndarray,
    exclude: np.ndarray,
    k: int,
    *,
    query_chunk: int = 1024,
    cand_chunk: int = 8192,
    capacity: int | None = None,
    stats: ScreenStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product among candidates with sim < below[i] and row != exclude[i].

    Same contract as `search.exact_filtered_topk`: ((n, k) ids padded with -1, (n, k) float32 sims),
    best first. Holds a bf16 copy of `cand_emb` (half its float32 size) during the call.
    """
    n, d = query_emb.shape
    cap = capacity or (4 * k + 64)
    pool = _as_tensor(cand_emb)  # float32 rows for rescoring and the fallback scan (no copy of an array)
    stats = stats if stats is not None else ScreenStats()
    blocks, dc_max, cn_max = [], 0.0, 0.0  # bf16 candidate rows with a trailing 1 (for -β)
    scratch = torch.empty((min(cand_chunk, len(cand_emb)), d))
    for s in range(0, len(cand_emb), cand_chunk):
        cb, dc, cn = _bf16_rows(cand_emb[s : s + cand_chunk], 1.0, scratch)
        blocks.append(cb)
        dc_max, cn_max = max(dc_max, float(dc.max())), max(cn_max, float(cn.max()))
    del scratch
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_sims = np.full((n, k), -np.inf, dtype=np.float32)
    ninf = torch.tensor(-torch.inf)
    rescore_buf = torch.empty((max(RESCORE_ROWS, cap), d))
    u = BF16_UNIT_ROUNDOFF / (1 - BF16_UNIT_ROUNDOFF)  # |x - x^| <= u |x^| for the bf16 output x^
    for qs in range(0, n, query_chunk):
        q32 = torch.from_numpy(np.array(query_emb[qs : qs + query_chunk], dtype=np.float32))
        m, rows_m = len(q32), torch.arange(len(q32))
        thr = torch.from_numpy(np.asarray(below[qs : qs + m], dtype=np.float32))
        beta = thr.to(torch.bfloat16)
        qb, dq, qn = _bf16_rows(q32.numpy(), -beta)
        margin = thr - beta.float()  # valid <=> y < margin, y = q.c - β
        # e0: input rounding + accumulation, per query; the output part u |x^| is added per entry.
        e0 = q32.norm(dim=1) * dc_max + dq * cn_max
        e0 = (e0 + (d + 1) * F32_UNIT_ROUNDOFF * (qn * cn_max + beta.float().abs())) * 1.001 + 1e-7
        # lo(x^) = x^ - e0 - u|x^| and hi(x^) = x^ + e0 + u|x^| both grow with x^, so "possibly valid"
        # (lo < margin) is x^ < x_maybe, and ranking by x^ ranks by lo and by hi alike.
        top = margin + e0
        x_maybe = _to_bf16(torch.where(top >= 0, top / (1 - u), top / (1 + u)) + 1e-7, up=True)
        exc = torch.from_numpy(np.asarray(exclude[qs : qs + m], dtype=np.int64))
        keep_v = torch.full((m, cap), -torch.inf)  # the `cap` largest x^ below x_maybe so far, per query
        keep_i = torch.full((m, cap), -1, dtype=torch.long)
        x_floor = None  # per query, x^ below which hi cannot reach t: such entries are never needed
        start = 0
        for cb in blocks:
            x = qb @ cb.T  # (m, block) bf16
            own = (exc >= start) & (exc < start + len(cb))
            x[rows_m[own], exc[own] - start] = -torch.inf
            if x_floor is None:  # first block: a plain top-cap
                x.masked_fill_(x >= x_maybe[:, None], -torch.inf)
                v, i = x.topk(min(cap, len(cb)), dim=1)
                v = v.float()
            else:  # later blocks: only the few entries between the floor and x_maybe, packed per row
                r, c = ((x < x_maybe[:, None]) & (x >= x_floor[:, None])).nonzero(as_tuple=True)
                counts = torch.bincount(r, minlength=m)
                width = max(int(counts.max()), 1)
                slot = torch.arange(len(r)) - (torch.cumsum(counts, 0) - counts)[r]
                v = torch.full((m, width), -torch.inf)
                i = torch.zeros((m, width), dtype=torch.long)
                v[r, slot], i[r, slot] = x[r, c].float(), c
            merged = torch.cat([keep_v, v], 1).topk(cap, dim=1)
            keep_i = torch.cat([keep_i, i + start], 1).gather(1, merged.indices)
            keep_v = merged.values
            start += len(cb)
            x_floor = _floor(keep_v, e0, margin, u, k)
        err = e0[:, None] + u * keep_v.abs()
        lo, hi = keep_v - err, keep_v + err
        t = _kth_sure_lo(lo, hi, margin, k)
        # Every exact top-k member has hi >= t: a full list that still reaches t may have left one out.
        full = torch.isfinite(keep_v[:, -1]) & (hi[:, -1] >= t)
        ok = (~full).nonzero().squeeze(1)
        need = (hi >= t[:, None]) & torch.isfinite(keep_v)  # a prefix of each row (sorted by x^)
        # float32 rescoring of the needed candidates. Rows go by how many they need, so a group's
        # padding is small, and the gathered rows land in one reused buffer (a fresh gather output
        # per group cost more in page faults than the rescoring itself).
        counts = need[ok].sum(1)
        order = torch.argsort(counts, stable=True)
        ok, counts = ok[order], counts[order]
        s = 0
        while s < len(ok):
            e = min(s + 64, len(ok))
            w = max(int(counts[e - 1]), 1)
            e = min(e, s + max(1, len(rescore_buf) // w))
            rows = ok[s:e]
            ki, valid = keep_i[rows, :w], need[rows, :w]
            vecs = torch.index_select(pool, 0, ki.clamp(min=0).reshape(-1), out=rescore_buf[: len(rows) * w])
            exact = torch.einsum("qd,qcd->qc", q32[rows], vecs.view(len(rows), w, d))
            exact = torch.where(valid & (exact < thr[rows, None]), exact, ninf)
            best = exact.topk(min(k, w), dim=1)
            got_i = ki.gather(1, best.indices)
            got_i[~torch.isfinite(best.values)] = -1
            out_ids[qs + rows.numpy(), : best.values.shape[1]] = got_i.numpy()
            out_sims[qs + rows.numpy(), : best.values.shape[1]] = best.values.numpy()
            stats.rescored += int(valid.sum())
            s = e
        stats.screened += len(ok)
        bad = full.nonzero().squeeze(1).numpy()
        if len(bad):
            stats.fallback += len(bad)
            rows = qs + bad
            ids_f, sims_f = _exact_scan(pool, q32[bad], thr[bad], exc[bad], k)
            out_ids[rows], out_sims[rows] = ids_f.numpy(), sims_f.numpy()
    return out_ids, out_sims
