"""Peak memory of one embedder training step with and without GradCache (tiny Qwen2-VL, CPU).

Every configuration (batch size x chunk size) runs in its own subprocess through the real
training path (`train_embedder`, DeepSpeed ZeRO-2, one rank, judge-KL loss, k = 8 negatives per
query, images included). After the first optimizer step (model, optimizer states and imports are
all resident) the process returns freed heap to the OS (`malloc_trim`), resets its peak-RSS
counter (`/proc/self/clear_refs` = 5) and records its RSS; after the second step it reads the
peak (`VmHWM`). Workers run with one intra-op thread (OMP_NUM_THREADS=1) so that timings of the
many small GradCache chunks are not dominated by thread synchronisation on a shared machine.
Reported per configuration:

- `peak`: the process's peak RSS during the second step;
- `step GFLOP` and its fraction of the fp32 matmul peak (measured in the worker, one thread): 2 FLOPs
  per weight per token forward, 4 backward, 2 more for GradCache's no-grad forward, on unpadded tokens;
- `step`: that peak minus the RSS before the step, i.e. what the step itself allocates
  (activations, representations, gradients in flight). It needs the peak reset: without it VmHWM is
  the peak since start and `step` would be meaningless, so the script fails when a reset did not happen.

GradCache must not change the training: each configuration's losses and gradient norms of both steps
are compared with the plain backward at the same batch (relative 1e-3; the order of float32 sums
differs) and the script exits 1 when they differ. It ends with

    RESULT gradcache: ratio X peak step allocation batch 64 / batch 8 with GradCache (chunk 2)

    .venv/bin/python benchmarks/gradcache_memory.py            # batches 8 and 64, chunk 2 vs off
    .venv/bin/python benchmarks/gradcache_memory.py --batches 8 32 --chunk 4 --home /path/to/embedded

`--home` is an embedded default built by `unime-assets build-default`; without it a reduced one
is built in a temporary directory (~30 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Give freed heap pages back to the OS (glibc keeps them resident otherwise), then restart VmHWM."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _examples(settings, n: int, k: int, seed: int = 0):
    """Queries of the synthetic train split with their positive and k other rows' positives."""
    import polars as pl

    from unime_assets.models.encoding import Item
    from unime_assets.training.embedder import EmbedderExample

    cols = ["qry", "qry_image_path", "pos_text", "pos_image_path"]
    frames = [pl.read_parquet(p).select(cols) for p in sorted(Path(settings.train_root).glob("*/*.parquet"))]
    rows = pl.concat(frames).to_dicts()
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} train rows under {settings.train_root}, need {n}")
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(rows[:n]):
        negs = rng.sample([x for j, x in enumerate(rows) if j != i], k)
        cands = [Item(x["pos_text"], x["pos_image_path"]) for x in [r, *negs]]
        scores = [0.9] + [rng.random() * 0.8 for _ in negs]
        out.append(EmbedderExample(Item(r["qry"], r["qry_image_path"]), cands, scores))
    return out


def worker(home: Path, batch: int, chunk: int, k: int) -> dict:
    from unime_assets.config import load_settings
    from unime_assets.training.embedder import train_embedder
    from unime_assets.training.engine import EngineConfig

    settings = load_settings(home / "settings.yaml")
    examples = _examples(settings, batch, k)
    cfg = EngineConfig(micro_batch_size=batch, total_steps=2, lr=1e-4, warmup_steps=1, zero_stage=2)
    marks: dict[str, float] = {}

    def log(step: int, metrics: dict[str, float]) -> None:
        marks[f"loss_{step}"], marks[f"grad_norm_{step}"] = metrics["loss"], metrics["grad_norm"]
        if step == 0:  # everything but the step itself is resident now
            marks["reset"] = _reset_peak()
            marks["before_kib"] = _status_kib("VmRSS")
            marks["t0"], marks["c0"] = time.perf_counter(), time.process_time()
        else:
            marks["peak_kib"] = _status_kib("VmHWM")
            marks["seconds"] = time.perf_counter() - marks["t0"]
            marks["cpu_seconds"] = time.process_time() - marks["c0"]

    with tempfile.TemporaryDirectory() as out:
        train_embedder(settings.embedder_base.path, examples, settings.train_image_root, Path(out) / "ckpt",
                       cfg, gradcache_chunk=chunk, log=log)  # fmt: skip
    sequences = batch * (k + 2)
    # FLOPs of the step: 2 per weight per token forward, twice that backward, plus GradCache's extra
    # no-grad forward; tokens counted without padding (a lower bound), weights without the embeddings.
    from peak import measure_peak

    from unime_assets.models.encoding import ImageLoader, embed_inputs
    from unime_assets.models.loading import load_model

    lm = load_model(settings.embedder_base.path, role="embedder")
    weights = sum(p.numel() for p in lm.model.parameters()) - lm.model.get_input_embeddings().weight.numel()
    loader = ImageLoader(settings.train_image_root)
    tokens = sum(int(embed_inputs([e.query, *e.candidates], lm.processor, loader, lm.image_token)["attention_mask"].sum())
                 for e in examples)  # fmt: skip
    flops = 2.0 * weights * tokens * (4 if chunk else 3)
    peak = measure_peak(size=1024, k=1024)
    return {"batch": batch, "chunk": chunk, "sequences": sequences, "peak_mib": marks["peak_kib"] / 1024,
            "step_mib": (marks["peak_kib"] - marks["before_kib"]) / 1024, "step_seconds": marks["seconds"],
            "step_cpu_seconds": marks["cpu_seconds"], "step_gflop": flops / 1e9,
            "peak_fraction": flops / marks["cpu_seconds"] / peak.flops_per_cpu_s,
            "peak_reset": bool(marks["reset"]),
            "train": [marks["loss_0"], marks["grad_norm_0"], marks["loss_1"], marks["grad_norm_1"]]}  # fmt: skip


def check(results: list[dict], batches: list[int], chunk: int) -> list[str]:
    """What makes the run invalid: a missing peak reset, or GradCache training differently from plain."""
    failures = []
    if not all(r["peak_reset"] for r in results):
        failures.append("the peak-RSS reset (/proc/self/clear_refs) did not happen: step allocations are not measured")
    for batch in batches:  # GradCache is exact: same losses and gradient norms as the plain backward
        plain = next(r for r in results if r["chunk"] == 0 and r["batch"] == batch)["train"]
        cached = next(r for r in results if r["chunk"] == chunk and r["batch"] == batch)["train"]
        if not all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(plain, cached, strict=True)):
            failures.append(f"batch {batch}: GradCache {cached} differs from the plain backward {plain} "
                            "(loss, grad norm of steps 1 and 2)")  # fmt: skip
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, help="embedded default home (default: build a reduced one)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--chunk", type=int, default=2)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--worker", nargs=3, type=int, metavar=("BATCH", "CHUNK", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("WORKER " + json.dumps(worker(args.home, *args.worker)), flush=True)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        home = args.home
        if home is None:
            from unime_assets.embedded import build_embedded_default

            home = Path(tmp) / "embedded"
            build_embedded_default(home, "test")
        results = []
        for chunk in (0, args.chunk):
            for batch in args.batches:
                cmd = [sys.executable, __file__, "--home", str(home),
                       "--worker", str(batch), str(chunk), str(args.k)]  # fmt: skip
                env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("WORKER ")]
                if proc.returncode != 0 or not lines:
                    raise SystemExit(f"worker {batch}/{chunk} failed:\n{proc.stderr[-4000:]}")
                res = json.loads(lines[-1][len("WORKER ") :])
                results.append(res)
                print(json.dumps(res), flush=True)

    print(f"\none embedder step, tiny Qwen2-VL, k={args.k} (each query: query + positive + k negatives), CPU")
    print("| GradCache | batch | sequences | peak RSS MiB | step alloc MiB | step s | step CPU s | step GFLOP "
          "| fp32 peak fraction (CPU) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        gc = f"chunk {r['chunk']}" if r["chunk"] else "off"
        print(f"| {gc} | {r['batch']} | {r['sequences']} | {r['peak_mib']:.0f} | {r['step_mib']:.0f} | "
              f"{r['step_seconds']:.1f} | {r['step_cpu_seconds']:.1f} | {r['step_gflop']:.1f} | {r['peak_fraction']:.3f} |")  # fmt: skip
    lo, hi = min(args.batches), max(args.batches)
    for chunk in (0, args.chunk):
        a = next(r for r in results if r["chunk"] == chunk and r["batch"] == lo)
        b = next(r for r in results if r["chunk"] == chunk and r["batch"] == hi)
        gc = f"chunk {chunk}" if chunk else "no GradCache"
        print(f"{gc}: batch {hi} / batch {lo}: peak {b['peak_mib'] / a['peak_mib']:.2f}x, "
              f"step alloc {b['step_mib'] / max(a['step_mib'], 1e-9):.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failures = check(results, args.batches, args.chunk)
    for f in failures:
        print("FAILED:", f)
    a = next(r for r in results if r["chunk"] == args.chunk and r["batch"] == lo)
    b = next(r for r in results if r["chunk"] == args.chunk and r["batch"] == hi)
    print(f"RESULT gradcache: ratio {b['step_mib'] / max(a['step_mib'], 1e-9):.2f} peak step allocation batch {hi} / "
          f"batch {lo} with GradCache (chunk {args.chunk}); peak RSS {b['peak_mib']:.0f} / {a['peak_mib']:.0f} MiB")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
