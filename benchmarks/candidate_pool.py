"""The candidate pool's δ-rule search at real embedding sizes: the default vs FAISS vs chunked torch.

What is timed is what the `candidate_pool` asset runs, `retrieval.search_below_positive` (top-50 per
query strictly below the query's own positive similarity, its own row excluded), on clustered
embeddings that resemble a retriever's (`benchmarks/pool_data.py` says what is assumed), at the
embedder's dimension 1536 (Qwen2-VL-2B) and the 7B retriever's 3584. Methods:

- default: `search_below_positive(..., method="auto")` over an exact index, the asset's call; at these
  shapes it picks `screened` on a CPU with native bf16, else `torch` (one float32 pass over the pool in
  blocks, δ mask inside, running top-k);
- faiss_flat: the same call forced to `method="faiss"` (IndexFlatIP, search k + 16, deepen the short);
- torch / screened: the same call with that method forced (`torch`: the float32 scan in blocks;
  `screened`: bf16 screen + float32 rescoring, exact);
- torch_chunked: the baseline a practitioner writes: q @ pool.T in float32 per 4096 queries, the
  δ mask, topk(50);
- faiss_ivf / faiss_hnsw (`--approx`, on by default): approximate indexes through the same call,
  recall@50 against the exact answer, build time included, at the smaller shape (IVF k-means and
  HNSW construction at 100K x 3584 take longer than this benchmark's budget on 2 cores).

Every method runs in its own subprocess over the same memory-mapped embeddings (as the asset reads
them); it reports wall and process CPU time (CPU time is the steadier figure on a shared machine),
the extra peak RSS, and achieved FLOP/s (2 x queries x pool x dim, the work of one exact scan)
as a fraction of the fp32 matmul peak measured in the same run. The exact methods must agree: a
query may differ only by candidates within 1e-5 of its 50th score or of its δ (float32 sums in
another order), checked in float64; otherwise the script exits 1.

    .venv/bin/python benchmarks/candidate_pool.py            # ~6 min on 2 idle cores
    .venv/bin/python benchmarks/candidate_pool.py --quick    # small sizes, a smoke test (seconds)

Ends with `RESULT candidate_pool: ratio X default vs chunked torch, CPU time, <shape>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 50
CHUNK = 4096
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# --- worker -----------------------------------------------------------------------------------------


def torch_chunked(q: np.ndarray, c: np.ndarray, pos_sim: np.ndarray, pos: np.ndarray) -> np.ndarray:
    import torch

    tc = torch.from_numpy(np.asarray(c))
    ids = np.full((len(q), K), -1, dtype=np.int64)
    for s in range(0, len(q), CHUNK):
        sims = torch.from_numpy(np.ascontiguousarray(q[s : s + CHUNK])) @ tc.T
        sims[sims >= torch.from_numpy(pos_sim[s : s + CHUNK])[:, None]] = -torch.inf  # δ rule
        sims[torch.arange(len(sims)), torch.from_numpy(pos[s : s + CHUNK])] = -torch.inf
        v, i = sims.topk(K, dim=1)
        i[~torch.isfinite(v)] = -1
        ids[s : s + CHUNK] = i.numpy()
    return ids


def run_method(method: str, q: np.ndarray, c: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, float, str]:
    """(ids (nq, K) padded with -1, build seconds, which search answered)."""
    from unime_assets.retrieval import build_index, search_below_positive

    pos_sim = np.einsum("ij,ij->i", q, c[pos]).astype(np.float32)
    if method == "torch_chunked":
        return torch_chunked(q, c, pos_sim, pos), 0.0, "torch"
    t0 = time.perf_counter()
    kind = {"faiss_ivf": "ivf", "faiss_hnsw": "hnsw"}.get(method, "flat")
    params = {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128} if kind == "hnsw" else {}
    index = build_index(np.asarray(c), kind, use_gpu=False, **params)  # type: ignore[arg-type]
    build = time.perf_counter() - t0
    how = {"default": "auto", "screened": "screened", "torch": "torch"}.get(method, "faiss")
    res = search_below_positive(index, q, c[pos], pos, k=K, chunk=CHUNK, cand_emb=c, method=how)
    return res.ids, build, res.method


def worker(method: str, data: str, out: str, threads: int) -> None:
    import torch

    # unime_assets pins the OpenBLAS core before faiss loads (its bundled copy misdetects some CPUs)
    from unime_assets.retrieval.faiss_index import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    q = np.load(data + "/q.npy")
    c = np.load(data + "/c.npy", mmap_mode="r")  # as the asset reads candidate_embeddings.npy
    pos = np.load(data + "/pos.npy")
    before = _status_kb("VmRSS")
    exact_peak = _reset_peak()
    t0, cpu0 = time.perf_counter(), time.process_time()
    ids, build, how = run_method(method, q, c, pos)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _status_kb("VmHWM")
    np.save(out, ids)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "build_seconds": build, "answered_by": how,
                      "peak_extra_mb": (peak - before) / 1024, "exact_peak": exact_peak}))  # fmt: skip


# --- driver -----------------------------------------------------------------------------------------


def spawn(method: str, data: str, tmp: str, threads: int) -> dict:
    out = os.path.join(tmp, f"{method}.npy")
    cmd = [sys.executable, __file__, "--worker", method, data, out, str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-3000:]}")
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    stats["ids"] = np.load(out)
    return stats


def agree(q, c, pos, a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> tuple[int, int]:
    """(queries with identical results, queries differing only within tol of the 50th score or of δ).

    Float32 sums in another order may put a near-duplicate of the positive on the other side of δ
    (and so push one answer's last candidate out) or split a tie at the 50th score; checked in
    float64, anything else raises AssertionError naming the query."""
    same = ties = 0
    for i in range(len(q)):
        sa, sb = set(a[i][a[i] >= 0].tolist()), set(b[i][b[i] >= 0].tolist())
        if sa == sb:
            same += 1
            continue
        qi = q[i].astype(np.float64)
        delta = float(qi @ np.asarray(c[pos[i]], dtype=np.float64))
        union = np.sort(np.fromiter(sa | sb, dtype=np.int64))
        score = dict(zip(union.tolist(), (np.asarray(c[union], dtype=np.float64) @ qi).tolist(), strict=True))
        at_delta = {j for j, v in score.items() if abs(v - delta) <= tol}
        m = max(len(sa & at_delta), len(sb & at_delta))  # slots a δ-boundary candidate may take
        ra, rb = (sorted(s - at_delta, key=score.__getitem__, reverse=True)[: K - m] for s in (sa, sb))
        valid = sorted((v for j, v in score.items() if j not in at_delta and v < delta), reverse=True)
        kth = valid[K - m - 1] if len(valid) >= K - m else -np.inf
        for j in set(ra) ^ set(rb):
            v = score[j]
            assert abs(v - kth) <= tol, (
                f"query {i}: candidate {j} (sim {v:.6f}, 50th {kth:.6f}, δ {delta:.6f}) differs beyond ties"
            )
        ties += 1
    return same, ties


def recall(a: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(x[x >= 0].tolist()) & set(y[y >= 0].tolist())) / max((y >= 0).sum(), 1)
            for x, y in zip(a, truth, strict=True)]  # fmt: skip
    return float(np.mean(hits))


def run_shape(nq: int, npool: int, dim: int, methods: list[str], threads: int, tmp: str) -> list[dict]:
    import torch
    from pool_data import clustered_embeddings, similarity_profile

    data = os.path.join(tmp, f"{nq}-{npool}-{dim}")
    os.makedirs(data)
    q, c, pos = clustered_embeddings(nq, npool, dim)
    prof = similarity_profile(q, c, pos)
    np.save(data + "/q.npy", q), np.save(data + "/c.npy", c), np.save(data + "/pos.npy", pos)
    del c
    torch.set_num_threads(threads)
    c = np.load(data + "/c.npy", mmap_mode="r")
    print(f"  {nq:,} x {npool:,} at dim {dim}: positive sim {prof['pos_sim']:.2f}, positive rank median "
          f"{prof['pos_rank_median']:.0f} / p90 {prof['pos_rank_p90']:.0f}, unrelated sim {prof['sim_mean']:.2f} "
          f"± {prof['sim_std']:.2f}, 50th best {prof['sim_at_rank_50']:.2f}", file=sys.stderr, flush=True)  # fmt: skip
    res = {m: spawn(m, data, tmp, threads) for m in methods}
    ref = res.get("torch_chunked") or res["default"]
    rows = []
    for m, r in res.items():
        if m in ("faiss_ivf", "faiss_hnsw"):
            check = f"recall@{K} {recall(r['ids'], ref['ids']):.3f}"
        else:
            same, ties = agree(q, c, pos, ref["ids"], r["ids"])
            check = "identical" if ties == 0 else f"identical ({ties} ties at the 50th score or δ)"
        rows.append({"shape": f"{nq:,} x {npool:,} @ {dim}", "nq": nq, "npool": npool, "dim": dim, "method": m,
                     **{k: v for k, v in r.items() if k != "ids"}, "check": check})  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    ap.add_argument("--smoke", action="store_true", help="one toy shape, exact methods only (the tests)")
    ap.add_argument("--headline-only", action="store_true", help="only the 10K x 100K shape at dim 3584")
    ap.add_argument("--methods", nargs="+", help="only these methods (torch_chunked always runs: the baseline)")
    ap.add_argument("--no-approx", action="store_true", help="skip IVF / HNSW")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--mmeb-queries", type=int, default=662_000, help="for the extrapolated cost")
    ap.add_argument("--mmeb-pool", type=int, default=400_000,
                    help="unique MMEB-train targets assumed for the extrapolated cost (the asset reports the real count)")  # fmt: skip
    ap.add_argument("--gpu-tflops", type=float, default=40.0,
                    help="assumed sustained fp32 GEMM TFLOP/s of one GPU for the extrapolation (scripts/gpu_acceptance.sh measures it)")  # fmt: skip
    ap.add_argument("--worker", nargs=4, metavar=("METHOD", "DATA", "OUT", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        m, data, out, threads = args.worker
        worker(m, data, out, int(threads))
        return 0

    import torch
    from peak import measure_peak

    torch.set_num_threads(args.threads)
    exact = ["default", "faiss_flat", "torch_chunked", "torch"]
    approx = [] if args.no_approx else ["faiss_ivf", "faiss_hnsw"]
    if args.smoke:
        grid = [(300, 2_000, 64, exact)]
    elif args.quick:
        grid = [(1_000, 4_000, 256, exact + approx), (2_000, 6_000, 768, exact)]
    else:
        grid = [(2_000, 20_000, 3584, ["default", "torch_chunked", *approx]),
                (10_000, 100_000, 1536, exact), (10_000, 100_000, 3584, exact)]  # fmt: skip
        grid = grid[-1:] if args.headline_only else grid
    if args.methods:
        keep = {*args.methods, "torch_chunked"}
        grid = [(nq, npool, dim, [m for m in ms if m in keep]) for nq, npool, dim, ms in grid]
    headline = grid[-1][:3]
    peak32 = measure_peak(torch.float32)
    peak16 = measure_peak(torch.bfloat16)
    print(f"top-{K}, δ rule; {os.cpu_count()} CPUs, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f} at start\n{peak32.describe()}\n{peak16.describe()}\n")  # fmt: skip
    rows, t_all = [], time.perf_counter()
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_pool.") as tmp:
        for nq, npool, dim, methods in grid:
            try:
                rows += run_shape(nq, npool, dim, methods, args.threads, tmp)
            except AssertionError as err:
                print(f"MISMATCH at {nq} x {npool} @ {dim}: {err}")
                ok = False
    print("| queries x pool @ dim | method | answered by | wall s | CPU s | of which build | CPU time vs torch_chunked "
          "| fp32 peak fraction (wall / CPU) | peak extra MB | top-50 |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    base = {r["shape"]: r for r in rows if r["method"] == "torch_chunked"}
    for r in rows:
        flops = 2.0 * r["nq"] * r["npool"] * r["dim"]
        fw, fc = peak32.fraction(flops, r["seconds"], r["cpu_seconds"])
        ratio = base[r["shape"]]["cpu_seconds"] / r["cpu_seconds"] if r["shape"] in base else float("nan")
        print(f"| {r['shape']} | {r['method']} | {r['answered_by']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['build_seconds']:.1f} | {ratio:.2f}x | {fw:.2f} / {fc:.2f} | {r['peak_extra_mb']:.0f} | {r['check']} |")  # fmt: skip
    nq, npool, dim = headline
    key = f"{nq:,} x {npool:,} @ {dim}"
    d, t = next((r for r in rows if r["shape"] == key and r["method"] == "default"), None), base.get(key)
    if d is None or t is None:
        print("RESULT candidate_pool: ratio nan (the headline shape did not run)")
        return 1
    # Extrapolation: the same work rate as measured here, MMEB-train's query count and an assumed pool size.
    work = 2.0 * args.mmeb_queries * args.mmeb_pool * dim
    rate_d = 2.0 * nq * npool * dim / d["cpu_seconds"]
    print(f"\nMMEB-train search ({args.mmeb_queries:,} queries x {args.mmeb_pool:,} assumed unique targets, dim {dim}, "
          f"{work / 1e15:.2f} PFLOP): default {work / rate_d / 3600:.1f} CPU-core-hours at this run's "
          f"{rate_d / 1e9:.0f} GFLOP per CPU-second; chunked torch "
          f"{work / (2.0 * nq * npool * dim / t['cpu_seconds']) / 3600:.1f}; one GPU at an assumed "
          f"{args.gpu_tflops:.0f} TFLOP/s fp32 {work / args.gpu_tflops / 1e12:.0f} s")  # fmt: skip
    print(f"total {time.perf_counter() - t_all:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
    ratio = t["cpu_seconds"] / d["cpu_seconds"]
    print(f"RESULT candidate_pool: ratio {ratio:.2f} default ({d['answered_by']}) vs chunked torch, CPU time, "
          f"{nq:,} queries x {npool:,} pool at dim {dim}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
