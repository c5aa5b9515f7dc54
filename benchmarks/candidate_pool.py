"""FAISS vs torch matmul + topk for the candidate pool's top-50 search, on random unit vectors.

Every (method, size) runs in its own subprocess so its peak memory is measured alone: the worker
builds the data, resets the kernel's peak-RSS mark (/proc/self/clear_refs), runs the search and
reports VmHWM - RSS before the search (the extra memory the search needed at its peak). The exact
methods must return the same top-50 sets (up to ties at the 50th score, which float32 sums in
another order may swap); the script asserts it. Approximate indexes report recall@50.

    .venv/bin/python benchmarks/candidate_pool.py            # default grid, ~3 min on 2 cores
    .venv/bin/python benchmarks/candidate_pool.py --quick    # small sizes, a smoke test

Methods:
- faiss_flat: IndexFlatIP, queries in chunks of 4096 (what `retrieval.search_below_positive` does),
  imported through `unime_assets.retrieval` so the OpenBLAS core pin applies;
- faiss_flat_unpinned: the same with faiss's bundled OpenBLAS left on its own core detection
  (Prescott on this machine's CPU), to show what the pin is worth;
- torch_chunked: `q @ c.T` then `topk(50)` in chunks of 4096 queries;
- torch_full: one `q @ c.T` and `topk(50)` over all queries (the naive form; memory grows with queries);
- faiss_ivf / faiss_hnsw: the approximate indexes of `retrieval.build_index` (build time included;
  HNSW only with --approx). Random vectors have no cluster structure, the worst case for both, so
  their recall here is a floor, not what real embeddings give.

The machine is shared: wall time measures the share of the CPUs a run got, CPU time the work done
(including OpenMP threads spinning while they wait), so both are printed.
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
ROOT = Path(__file__).resolve().parents[1]


def make_data(n_queries: int, n_pool: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded unit vectors, float32 from the start so that no float64 copy inflates the baseline."""
    rng = np.random.default_rng([n_queries, n_pool, dim])
    c = rng.standard_normal((n_pool, dim), dtype=np.float32)
    q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, c


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


def run_method(method: str, q: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(ids (nq, K), sims (nq, K), build seconds) for one method."""
    build = 0.0
    if method.startswith("faiss"):
        from unime_assets.retrieval import build_index  # pins the OpenBLAS core unless told not to

        t0 = time.perf_counter()
        kind = {"faiss_ivf": "ivf", "faiss_hnsw": "hnsw"}.get(method, "flat")
        params = {"hnsw_m": 16, "ef_construction": 64, "ef_search": 128} if kind == "hnsw" else {}
        index = build_index(c, kind, use_gpu=False, **params)  # type: ignore[arg-type]
        build = time.perf_counter() - t0
        ids = np.empty((len(q), K), dtype=np.int64)
        sims = np.empty((len(q), K), dtype=np.float32)
        for s in range(0, len(q), CHUNK):
            sims[s : s + CHUNK], ids[s : s + CHUNK] = index.search(q[s : s + CHUNK], K)
        return ids, sims, build
    import torch

    tc = torch.from_numpy(c)
    if method == "torch_full":
        v, i = (torch.from_numpy(q) @ tc.T).topk(K, dim=1)
        return i.numpy(), v.numpy(), build
    ids = np.empty((len(q), K), dtype=np.int64)
    sims = np.empty((len(q), K), dtype=np.float32)
    for s in range(0, len(q), CHUNK):
        v, i = (torch.from_numpy(q[s : s + CHUNK]) @ tc.T).topk(K, dim=1)
        ids[s : s + CHUNK], sims[s : s + CHUNK] = i.numpy(), v.numpy()
    return ids, sims, build


def worker(method: str, n_queries: int, n_pool: int, dim: int, out: str) -> None:
    if method.startswith("faiss"):
        import unime_assets.retrieval  # noqa: F401  (pins the OpenBLAS core, loads faiss before the baseline)
    else:
        import torch  # noqa: F401
    q, c = make_data(n_queries, n_pool, dim)
    before = _status_kb("VmRSS")
    exact_peak = _reset_peak()
    t0, cpu0 = time.perf_counter(), time.process_time()
    ids, sims, build = run_method(method, q, c)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _status_kb("VmHWM")  # without the reset it is the peak since start, an upper bound
    np.save(out + ".ids.npy", ids)
    np.save(out + ".sims.npy", sims)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "build_seconds": build,
                      "peak_extra_mb": (peak - before) / 1024, "exact_peak": exact_peak}))  # fmt: skip


# --- driver -----------------------------------------------------------------------------------------


def spawn(method: str, n_queries: int, n_pool: int, dim: int, tmp: str) -> dict:
    out = os.path.join(tmp, f"{method}-{n_queries}-{n_pool}")
    env = dict(os.environ)
    if method == "faiss_flat_unpinned":
        env["OPENBLAS_CORETYPE"] = "Prescott"  # what faiss's OpenBLAS 0.3.15 detects on this CPU
    cmd = [sys.executable, __file__, "--worker", method, str(n_queries), str(n_pool), str(dim), out]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{method} {n_queries}x{n_pool} failed:\n{res.stderr[-3000:]}")
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    stats["ids"] = np.load(out + ".ids.npy")
    return stats


def same_topk(
    q: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray, tol: float = 1e-5
) -> tuple[int, int]:
    """(queries with identical sets, queries that differ only by ties at the K-th score); asserts the rest."""
    identical = tied = 0
    for i in range(len(q)):
        sa, sb = set(a[i].tolist()), set(b[i].tolist())
        if sa == sb:
            identical += 1
            continue
        s = c.astype(np.float64) @ q[i].astype(np.float64)
        kth = np.sort(s)[-K]
        diff = np.fromiter(sa ^ sb, dtype=np.int64)
        assert np.all(np.abs(s[diff] - kth) <= tol), f"query {i}: top-{K} sets differ beyond ties"
        tied += 1
    return identical, tied


def recall(a: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a.tolist(), truth.tolist(), strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--approx", action="store_true", help="also HNSW (slow to build on random data)")
    ap.add_argument(
        "--worker", nargs=5, metavar=("METHOD", "NQ", "NPOOL", "DIM", "OUT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.worker:
        m, nq, npool, dim, out = args.worker
        worker(m, int(nq), int(npool), int(dim), out)
        return

    exact = ["faiss_flat", "torch_chunked"]
    if args.quick:
        grid = [(2_000, 1_000, exact + ["torch_full", "faiss_ivf", "faiss_hnsw"]), (8_000, 1_000, exact)]
    else:
        grid = [
            (10_000, 10_000, exact + ["torch_full", "faiss_flat_unpinned"] + ["faiss_hnsw"] * args.approx),
            (100_000, 10_000, exact + ["torch_full"]),
            (10_000, 100_000, exact + ["faiss_ivf"]),
        ]
    print(f"dim {args.dim}, top-{K}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start\n")
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_pool.") as tmp:
        for n_queries, n_pool, methods in grid:
            q, c = make_data(n_queries, n_pool, args.dim)
            res = {m: spawn(m, n_queries, n_pool, args.dim, tmp) for m in methods}
            ref = res["faiss_flat"]
            for m, r in res.items():
                if m in ("faiss_ivf", "faiss_hnsw"):
                    check = f"recall@{K} {recall(r['ids'], res['torch_chunked']['ids']):.3f}"
                else:
                    identical, tied = same_topk(q, c, ref["ids"], r["ids"])
                    check = "identical" if tied == 0 else f"identical ({tied} ties at rank {K})"
                speed = res["torch_chunked"]["seconds"] / r["seconds"]
                cpu_speed = res["torch_chunked"]["cpu_seconds"] / r["cpu_seconds"]
                rows.append((f"{n_queries:,} x {n_pool:,}", m, r["seconds"], r["cpu_seconds"], r["build_seconds"],
                             speed, cpu_speed, r["peak_extra_mb"], check))  # fmt: skip
            print(f"  done {n_queries:,} queries x {n_pool:,} pool", file=sys.stderr)
    print("| queries x pool | method | wall s | CPU s | of which build | speed vs torch_chunked (wall / CPU) "
          "| peak extra MB | top-50 |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for size, m, sec, cpu, build, speed, cpu_speed, mb, check in rows:
        print(f"| {size} | {m} | {sec:.2f} | {cpu:.2f} | {build:.2f} | {speed:.2f}x / {cpu_speed:.2f}x | {mb:.0f} "
              f"| {check} |")  # fmt: skip
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
