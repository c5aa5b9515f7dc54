"""Benchmark: read + validate MMEB-train parquet (ours, vectorised) vs a naive row-by-row validator.

    .venv/bin/python benchmarks/read_validate.py [--rows 100000] [--subsets 4] [--images 4000] [--repeat 1]

Generates real MMEB-train parquet files (pyarrow, 2 shards per subset) and tiny PNG files in a temp
dir, with ~1 % defective rows (empty queries, missing images, paths escaping the root, duplicates).
Each variant runs in its own subprocess so its peak RSS (getrusage maxrss) is its own; "over
imports" subtracts the peak right after the imports. All validators must report the same findings.
"naive + path cache" is the naive loop remembering each image path's outcome: it shows how much of
the gap is the per-row image check and how much the row loop itself. It is the fairer baseline (what
a careful row-wise validator would do), so the headline compares against it:

    RESULT read_validate: ratio X ours vs row-wise with a path cache, read + validate CPU time

in process CPU time (all threads: polars reads in parallel), the steadier figure on a shared machine;
wall time is reported beside it. Exits 1 when the validators disagree on the findings (file, row,
field, reason) or the clean rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = (
    "read only",
    "ours, images none",
    "ours, images exists",
    "naive, images exists",
    "naive + path cache, images exists",
    "ours, images verify",  # the default: each image's header and structure read, pixels not decoded
)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generate(root: Path, rows: int, n_subsets: int, n_images: int, seed: int = 0) -> list[str]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (9, 9, 9)).save(buf, format="PNG")
    png = buf.getvalue()
    rng = random.Random(seed)
    schema = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text", "pos_image_path"]])
    subsets = [f"Bench{i}" for i in range(n_subsets)]
    per_subset, per_images = rows // n_subsets, n_images // n_subsets
    for s in subsets:
        img_dir = root / "images" / s / "Train"
        img_dir.mkdir(parents=True)
        for j in range(per_images):
            (img_dir / f"{j}.png").write_bytes(png)
        data: dict[str, list[str]] = {c: [] for c in schema.names}
        for i in range(per_subset):
            q = f"<|image_1|>\nRepresent the given image with the following question: question {i} of {s}?\n"
            qi = f"images/{s}/Train/{i % per_images}.png"
            pos, pi = f"answer {i % 97}", ""
            if i % 3 == 0:  # an image target every third row, like the retrieval subsets
                pos, pi = (
                    "<|image_1|>\nRepresent the given image.\n",
                    f"images/{s}/Train/{(i * 7) % per_images}.png",
                )
            r = rng.random()
            if r < 0.003:
                q, qi = "", ""  # empty query
            elif r < 0.006:
                qi = f"images/{s}/Train/missing_{i}.png"
            elif r < 0.008:
                qi = "../escape.png"
            elif r < 0.010 and i > 0:
                q, qi, pos, pi = data["qry"][-1], data["qry_image_path"][-1], data["pos_text"][-1], data[
                    "pos_image_path"
                ][-1]  # fmt: skip
            for c, x in zip(schema.names, (q, qi, pos, pi), strict=True):
                data[c].append(x)
        half = per_subset // 2
        (root / s).mkdir()
        for k, (a, b) in enumerate(((0, half), (half, per_subset))):
            table = pa.table({c: v[a:b] for c, v in data.items()}, schema=schema)
            pq.write_table(table, root / s / f"original-{k:05d}-of-00002.parquet")
    return subsets


def naive_validate(df, image_root: Path, cache: bool = False) -> list[dict]:
    """What one writes first: a Python loop over rows, every image path resolved per row."""
    from unime_assets.data.images import resolve_image_path

    outcome: dict[str, str] = {}

    def check(rel: str) -> str:
        if cache and rel in outcome:
            return outcome[rel]
        try:
            resolve_image_path(image_root, rel)
            res = ""
        except FileNotFoundError:
            res = "missing_image"
        except ValueError:
            res = "image_outside_root"
        outcome[rel] = res
        return res

    findings: list[dict] = []
    seen: set[tuple] = set()
    for r in df.iter_rows(named=True):
        where = {"file": r["source_file"], "row": r["source_row"]}
        if not r["qry"].strip() and not r["qry_image_path"]:
            findings.append({**where, "field": "qry,qry_image_path", "reason": "empty_query"})
        if not r["pos_text"].strip() and not r["pos_image_path"]:
            findings.append({**where, "field": "pos_text,pos_image_path", "reason": "empty_positive"})
        key = (r["subset"], r["qry"], r["qry_image_path"], r["pos_text"], r["pos_image_path"])
        if key in seen:
            findings.append(
                {**where, "field": "qry,qry_image_path,pos_text,pos_image_path", "reason": "duplicate"}
            )
        seen.add(key)
        for col in ("qry_image_path", "pos_image_path"):
            if r[col] and (reason := check(r[col])):
                findings.append({**where, "field": col, "reason": reason})
    return findings


def measure(variant: str, root: Path, subsets: list[str]) -> dict:
    import polars as pl
    import pyarrow.dataset  # noqa: F401  the first read_table imports it: an import cost, not a read cost

    from unime_assets.data.mmeb import load_train
    from unime_assets.data.validation import validate_train

    base = _maxrss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    df = load_train(root, subsets, provenance=True, dedup=False)
    t1 = time.perf_counter()
    findings, clean, keys = 0, df.height, []
    if variant.startswith("ours"):
        res = validate_train(df, root, policy="quarantine", check_images=variant.split()[-1])  # type: ignore[arg-type]
        findings, clean = res.counts["findings"], res.counts["clean"]
        keys = res.quarantine.select("file", "row", "field", "reason").rows()
    elif variant.startswith("naive"):
        found = naive_validate(df, root, cache="cache" in variant)
        bad = {(f["file"], f["row"]) for f in found}
        keep = [(f, r) not in bad for f, r in zip(df["source_file"], df["source_row"], strict=True)]
        clean, findings = df.filter(pl.Series(keep)).height, len(found)
        keys = [(f["file"], f["row"], f["field"], f["reason"]) for f in found]
    t2, c2 = time.perf_counter(), time.process_time()
    # what each validator found, as one digest: the compared paths must find the same (file, row, field, reason)
    digest = hashlib.sha256(json.dumps(sorted(map(list, keys))).encode()).hexdigest()[:16]
    return {"variant": variant, "rows": df.height, "read_s": t1 - t0, "validate_s": t2 - t1, "cpu_s": c2 - c0,
            "findings": findings, "clean": clean, "findings_digest": digest, "peak_mb": _maxrss_mb(), "base_mb": base}  # fmt: skip


def report(results: list[dict]) -> bool:
    """Print the table and the ratios; False when a validator disagrees with ours."""
    print("| variant | read s | validate s | total s | CPU s | rows/s (total) | rows/s (validate) | peak RSS MB "
          "| RSS over imports MB | findings | clean rows |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        total = r["read_s"] + r["validate_s"]
        val_rate = f"{r['rows'] / r['validate_s']:,.0f}" if r["validate_s"] > 1e-3 else "-"
        print(f"| {r['variant']} | {r['read_s']:.2f} | {r['validate_s']:.2f} | {total:.2f} | {r['cpu_s']:.2f} | "
              f"{r['rows'] / total:,.0f} | {val_rate} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} | "
              f"{r['findings']} | {r['clean']} |")  # fmt: skip
    by = {r["variant"]: r for r in results}
    ours = by["ours, images exists"]
    agree = True
    for other in (r for r in results if r["variant"].startswith("naive")):
        if (ours["findings"], ours["clean"], ours["findings_digest"]) != (
            other["findings"], other["clean"], other["findings_digest"]
        ):
            agree = False
            print(f"MISMATCH: ours {ours['findings']}/{ours['clean']} vs {other['variant']} "
                  f"{other['findings']}/{other['clean']}")  # fmt: skip
    print()
    for name in ("naive, images exists", "naive + path cache, images exists"):
        n = by[name]
        total_ratio = (n["read_s"] + n["validate_s"]) / (ours["read_s"] + ours["validate_s"])
        print(f"{name} / ours: validation time x{n['validate_s'] / ours['validate_s']:.1f}, "
              f"read+validate x{total_ratio:.1f}, CPU time x{n['cpu_s'] / ours['cpu_s']:.1f}")  # fmt: skip
    cached = by["naive + path cache, images exists"]
    wall = (cached["read_s"] + cached["validate_s"]) / (ours["read_s"] + ours["validate_s"])
    print(f"RESULT read_validate: ratio {cached['cpu_s'] / ours['cpu_s']:.1f} ours vs row-wise with a path cache, "
          f"read + validate CPU time ({ours['rows']:,} rows; wall-time ratio {wall:.1f})")  # fmt: skip
    return agree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--subsets", type=int, default=4)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest is shown")
    ap.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:  # child process: one variant, result as JSON on stdout
        subsets = sorted(p.name for p in args.root.iterdir() if p.name.startswith("Bench"))
        print(json.dumps(measure(args.measure, args.root, subsets)))
        return 0

    with tempfile.TemporaryDirectory(prefix="unime-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        generate(root, args.rows, args.subsets, args.images)
        print(f"generated {args.rows} rows in {args.subsets} subsets (2 shards each), {args.images} images: "
              f"{time.perf_counter() - t:.1f} s\n")  # fmt: skip
        results = []
        for v in VARIANTS:  # the machine is shared: keep the fastest of `repeat` runs
            cmd = [sys.executable, __file__, "--measure", v, "--root", str(root)]
            runs = [
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                for _ in range(args.repeat)
            ]
            parsed = [json.loads(out.strip().splitlines()[-1]) for out in runs]
            results.append(min(parsed, key=lambda r: r["read_s"] + r["validate_s"]))
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
