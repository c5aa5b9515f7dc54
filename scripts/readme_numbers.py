"""Regenerate the README's demo and ablation tables from a demo run and an ablation.json.

    .venv/bin/python scripts/readme_numbers.py                # rewrite the tables in README.md
    .venv/bin/python scripts/readme_numbers.py --check        # exit 1 when README.md differs

The demo table comes from the latest materializations in the Dagster instance at $DAGSTER_HOME
(default .dagster_home) and their tables under $UNIME_HOME (default .unime): `mmeb_report`'s P@1 per
subset (aggregated here with the pipeline's own `evaluation.aggregate`), the judge's held-out AUC, the
listwise answers that did not parse. The ablation table comes from `ablation.json` (default: what
`make ablation` writes, .unime-ablation/embedded/assets/ablation/ablation.json). Each lands between its
`<!-- readme_numbers:NAME -->` and `<!-- /readme_numbers:NAME -->` markers, with the commit, the torch
thread count and the CPU it was measured on: numbers of another commit or machine are visible as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGG = ("classification", "vqa", "retrieval", "grounding", "ind", "ood", "overall")


def _machine(threads: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"commit {commit}, {os.cpu_count()} CPU(s) {cpu}, torch threads {threads if threads is not None else '?'}"


def demo_table(dagster_home: Path, unime_home: Path) -> str:
    """The demo's MMEB-format P@1 table and its key numbers from the latest materializations."""
    import dagster as dg
    import polars as pl

    from unime_assets.data.catalog import get_catalog
    from unime_assets.evaluation import aggregate

    # The instance's dagster.yaml names its storage through $DAGSTER_HOME: point it at the instance read.
    os.environ["DAGSTER_HOME"] = str(Path(dagster_home).resolve())
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        def meta(key: str) -> dict:
            event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(key))
            if event is None or event.asset_materialization is None:
                raise SystemExit(f"{key} is not materialized in {dagster_home}: run `make demo` first")
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}

        report = meta("mmeb_report")
        judges = [k for k in instance.get_asset_keys() if k.path[0] == "judge_model"]
        aucs = {k.path[-1]: meta(k.to_user_string()).get("held_out_auc") for k in judges}
        threads = report.get("torch_threads")
    table = pl.read_parquet(unime_home / "assets" / "tables" / "mmeb_report.parquet")
    info = get_catalog("synthetic")[1]
    lines = ["| model | classification | vqa | retrieval | grounding | IND | OOD | overall |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (model,), rows in table.group_by("model", maintain_order=True):
        agg = aggregate(dict(zip(rows["subset"], rows["precision_at_1"], strict=True)), info)
        lines.append(f"| {model} | " + " | ".join(f"{100 * agg[k]:.1f}" for k in AGG) + " |")
    n_rows = report.get("rerank_rows")
    unparsable = f"{report.get('rerank_unparsable')} of {n_rows}" if n_rows else str(report.get("rerank_unparsable"))
    auc = ", ".join(f"{name} {v:.3f}" for name, v in aucs.items() if isinstance(v, float))
    lines += ["", f"Judge held-out AUC (IND eval rows): {auc}. Listwise answers that did not parse: {unparsable}.",
              f"Measured by `scripts/readme_numbers.py` from a `make demo` run ({_machine(threads)})."]  # fmt: skip
    return "\n".join(lines)


def ablation_table(path: Path) -> str:
    data = json.loads(path.read_text())
    labels = data.get("labels", {})
    lines = ["| variant | stands for | seeds | overall P@1 per seed | mean ± std | IND | OOD | Δ vs `"
             + data["baseline"] + "` [95 % CI] |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in data["rows"]:
        d = r.get("delta_vs_baseline")
        delta = "–" if d is None else f"{d['mean']:+.2f}" + (f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d["ci95"] else "")
        pm = f"{r['mean']:.2f}" + ("" if r["std"] is None else f" ± {r['std']:.2f}")
        ind, ood = (f"{r[k]['mean']:.2f}" + ("" if r[k]["std"] is None else f" ± {r[k]['std']:.2f}") for k in ("ind", "ood"))
        stands = "; ".join(labels.get(r["variant"], {}).values())
        lines.append(f"| `{r['variant']}` | {stands} | {len(r['seeds'])} | {', '.join(f'{x:.2f}' for x in r['overall'])} "
                     f"| {pm} | {ind} | {ood} | {delta} |")  # fmt: skip
    b = data.get("budget", {})
    lines += ["", f"Budget per run: {b.get('steps')} steps x {b.get('batch_size')} queries, lr {b.get('lr')}; "
              + (f"missing runs: {data['missing']}. " if data.get("missing") else "")
              + f"From `{path.name}` ({_machine(b.get('torch_threads'))})."]  # fmt: skip
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- readme_numbers:{name} -->\n).*?(<!-- /readme_numbers:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no <!-- readme_numbers:{name} --> ... <!-- /readme_numbers:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--dagster-home", type=Path, default=Path(os.environ.get("DAGSTER_HOME", ROOT / ".dagster_home")))
    p.add_argument("--unime-home", type=Path, default=Path(os.environ.get("UNIME_HOME", ROOT / ".unime")))
    p.add_argument("--ablation-json", type=Path, default=ROOT / ".unime-ablation" / "embedded" / "assets" / "ablation" / "ablation.json")
    p.add_argument("--only", choices=["demo", "ablation"], help="regenerate one table only")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 when the README differs")
    a = p.parse_args(argv)
    text = a.readme.read_text()
    new = text
    if a.only in (None, "demo"):
        new = replace_block(new, "demo", demo_table(a.dagster_home, a.unime_home))
    if a.only in (None, "ablation"):
        new = replace_block(new, "ablation", ablation_table(a.ablation_json))
    if a.check:
        if new != text:
            print(f"{a.readme} is stale: run scripts/readme_numbers.py", file=sys.stderr)
            return 1
        return 0
    a.readme.write_text(new)
    print(f"updated {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
