"""The ablation report: per variant mean ± std over seeds, the paired difference to the baseline with
its 95 % interval, one markdown table per paper table, a plot, and `ablation.json`.

`ablation.json` = {"rows": [{"variant", "seeds", "overall" (one value per seed, in `seeds` order), "mean",
"std", "ind", "ood", "delta_vs_baseline"}, ...], "baseline", "tables"}; P@1 in percent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from unime_assets.ablation.stats import mean_std, paired_difference
from unime_assets.ablation.variants import TABLES, Variant

# per variant, per seed: aggregates in percent (keys of evaluation.AGGREGATE_KEYS)
Results = Mapping[str, Mapping[int, Mapping[str, float]]]


def summary_rows(results: Results, baseline: str) -> list[dict]:
    """One row per variant (in `results` order)."""
    base = {seed: r["overall"] for seed, r in results.get(baseline, {}).items()}
    rows = []
    for variant, by_seed in results.items():
        seeds = sorted(by_seed)
        overall = [round(by_seed[s]["overall"], 4) for s in seeds]
        mean, std = mean_std(overall)
        row = {"variant": variant, "seeds": seeds, "overall": overall, "mean": round(mean, 4),
               "std": None if std is None else round(std, 4)}  # fmt: skip
        for key in ("ind", "ood"):
            m, sd = mean_std([by_seed[s][key] for s in seeds])
            row[key] = {"mean": round(m, 4), "std": None if sd is None else round(sd, 4)}
        diff = paired_difference({s: by_seed[s]["overall"] for s in seeds}, base) if variant != baseline else None
        row["delta_vs_baseline"] = None if diff is None else {
            "mean": round(diff.mean, 4), "ci95": None if diff.low is None else [round(diff.low, 4), round(diff.high, 4)],
            "seeds": list(diff.seeds)}  # fmt: skip
        rows.append(row)
    return rows


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _delta(row: dict) -> str:
    d = row["delta_vs_baseline"]
    if d is None:
        return "–"
    return f"{d['mean']:+.2f}" + (f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d["ci95"] else "")


def table_markdown(rows: list[dict], variants: Mapping[str, Variant], baseline: str) -> dict[str, str]:
    """One markdown table per paper table the variants have rows in; a variant standing in several
    tables (the profile's recipe) appears in each."""
    by_name = {r["variant"]: r for r in rows}
    out = {}
    for table, title in TABLES.items():
        members = [(v.rows[table], by_name[v.name]) for v in variants.values() if table in v.rows and v.name in by_name]
        if not members:
            continue
        lines = [f"**{title}** (overall P@1 %, mean ± std over seeds; Δ to `{baseline}` paired by seed, 95 % t-interval)",
                 "", "| row | variant | seeds | per seed | mean ± std | IND | OOD | Δ overall |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, r in members:
            per_seed = ", ".join(f"{x:.2f}" for x in r["overall"])
            lines.append(f"| {label} | `{r['variant']}` | {len(r['seeds'])} | {per_seed} | {_pm(r['mean'], r['std'])} | "
                         f"{_pm(r['ind']['mean'], r['ind']['std'])} | {_pm(r['ood']['mean'], r['ood']['std'])} | {_delta(r)} |")  # fmt: skip
        out[table] = "\n".join(lines)
    return out


def write_ablation_json(rows: list[dict], path: str | Path, *, baseline: str, tables: dict[str, list[str]],
                        extra: dict | None = None) -> Path:  # fmt: skip
    from unime_assets.io import atomic_path

    path = Path(path)
    payload = {"rows": rows, "baseline": baseline, "tables": tables, **(extra or {})}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def ablation_plot(rows: list[dict], title: str = "ablation: overall P@1 over seeds"):
    """Mean ± std bars per variant with each seed's value as a dot."""
    from unime_assets.tracking.plots import plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows)), 3.4))
    x = np.arange(len(rows))
    ax.bar(x, [r["mean"] for r in rows], yerr=[r["std"] or 0.0 for r in rows], capsize=3, alpha=0.6)
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["overall"]), r["overall"], s=10, color="black", zorder=3)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=35, ha="right")
    ax.set(ylabel="overall P@1 (%)", title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
