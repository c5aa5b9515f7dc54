"""What `unime-assets summary` prints: each asset's latest materialization, time per stage (job), judge
quality and mining statistics over every materialized partition (the worst partition named), the MMEB
meta-task table and the registered model versions with their aliases.

Everything is read back from the Dagster instance, the tables its materializations wrote (their `path`
metadata) and the MLflow store; nothing is recomputed from models.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence

import dagster as dg
import numpy as np
import polars as pl

from unime_assets.defs.automation import JOBS
from unime_assets.defs.partitions import JUDGES
from unime_assets.defs.resources import MlflowResource, SettingsResource

# Metadata shown per asset in the first section (the rest is on the asset's page in the UI).
SHOWN = {
    "mmeb_train": ["rows"],
    "mmeb_eval": ["rows"],
    "pretrained_base": ["final_loss"],
    "retriever_model": ["final_loss"],
    "judge_model": ["held_out_auc", "held_out_auc_ood"],
    "candidate_index": ["pool_size", "encoded", "cached"],
    "candidate_pool": ["queries", "mean_candidates"],
    "judge_scores": ["pairs", "auc_pos_vs_candidates", "false_negative_rate"],
    "judge_ensemble": ["judges", "rule", "fn_filter_disagreement", "spearman"],
    "mined_negatives": ["judge", "fallback_fraction", "mean_survivors"],
    "training_set": ["queries", "source"],
    "embedder_checkpoint": ["first_loss", "final_loss", "model_version"],
    "reranker_checkpoint": ["first_loss", "final_loss", "model_version"],
    "mmeb_report": ["complete", "rerank_unparsable"],
}
REGISTERED = ("unime-v2-embedder", "unime-v2-reranker")


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Columns of numbers (durations, percentages) right-aligned, text left-aligned; cells as given."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [i > 0 and all(r[i][:1].isdigit() or r[i] in {"-", "n/a"} for r in cells[1:]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return indent + "  ".join(c.rjust(w) if numeric[i] else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()  # fmt: skip

    return "\n".join([line(cells[0]), indent + "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4g}"
    return str(value)


def duration(value: float | None) -> str:
    """Seconds as `42s` or `3m05s`."""
    if value is None:
        return "?"
    s = int(round(value))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def typical_run_seconds(instance: dg.DagsterInstance, job_name: str, last: int = 20) -> float | None:
    """Median wall time of the last successful runs of a job (None before the first one)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=last
    )
    times = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    return statistics.median(times) if times else None


# --- reading what materializations left ---------------------------------------------------------


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0] if records else None


def partition_records(instance: dg.DagsterInstance, asset: str) -> dict[str, object]:
    """{partition: latest materialization record} for every materialized partition, in partition order."""
    parts = instance.get_materialized_partitions(dg.AssetKey.from_user_string(asset))
    records = {p: _latest(instance, asset, p) for p in sorted(parts)}
    return {p: r for p, r in records.items() if r is not None}


def _table(record) -> pl.DataFrame | None:
    meta = record.asset_materialization.metadata
    path = meta.get("path")
    try:
        return pl.read_parquet(str(path.value)) if path is not None else None
    except (FileNotFoundError, OSError):
        return None


def partition_tables(instance: dg.DagsterInstance, asset: str) -> dict[str, pl.DataFrame]:
    out = {p: _table(r) for p, r in partition_records(instance, asset).items()}
    return {p: t for p, t in out.items() if t is not None}


def expand_judges(assets: Sequence[str]) -> list[str]:
    """`judge_model` and `judge_scores` stand for one asset per judge of the profile (`judge_scores/<name>`)."""
    out: list[str] = []
    for a in assets:
        out += [f"{a}/{j}" for j in JUDGES] if a in ("judge_model", "judge_scores") else [a]
    return out


# --- sections -------------------------------------------------------------------------------------


def assets_section(instance: dg.DagsterInstance, assets: Sequence[str]) -> tuple[list[str], list[str]]:
    lines, missing = [], []
    for name in assets:
        event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(name))
        if event is None:
            missing.append(name)
            lines.append(f"  {name:22s} NOT MATERIALIZED")
            continue
        meta = event.asset_materialization.metadata
        parts = instance.get_materialized_partitions(dg.AssetKey.from_user_string(name))
        shown = [f"partitions={len(parts)}"] if parts else []
        shown += [f"{k}={_fmt(meta[k].value)}" for k in SHOWN[name.split('/')[0]] if k in meta]
        lines.append(f"  {name:22s} run {event.run_id[:8]}  " + "  ".join(shown))
    return lines, missing


def _covered_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one (start, end) span: a stage's wall time whether its runs went one
    after the other or side by side (a backfill, `materialize --workers`)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def timing_section(instance: dg.DagsterInstance, assets: Sequence[str]) -> str:
    """Wall time of the runs behind the current materializations, per job (stage), in graph order, with
    each asset's step time (summed over the stage's runs) and the slowest run."""
    run_ids: set[str] = set()
    for name in assets:
        parts = instance.get_materialized_partitions(dg.AssetKey.from_user_string(name))
        records = partition_records(instance, name).values() if parts else [_latest(instance, name)]
        run_ids |= {r.run_id for r in records if r is not None}
    runs = instance.get_run_records(filters=dg.RunsFilter(run_ids=sorted(run_ids))) if run_ids else []
    step_keys = {dg.AssetKey.from_user_string(a).to_python_identifier() for a in assets}
    by_job: dict[str, list] = defaultdict(list)
    for r in runs:
        by_job[r.dagster_run.job_name].append(r)
    order = [j.name for j in JOBS] + sorted(set(by_job) - {j.name for j in JOBS})
    rows = []
    for job in order:
        records = by_job.get(job)
        if not records:
            continue
        records = [r for r in records if r.start_time and r.end_time]  # finished runs only
        if not records:
            continue
        walls = {r.dagster_run.run_id: r.end_time - r.start_time for r in records}
        steps: dict[str, float] = defaultdict(float)
        for r in records:
            for st in instance.get_run_step_stats(r.dagster_run.run_id):
                if st.step_key in step_keys and st.start_time and st.end_time:  # asset steps, not checks
                    steps[st.step_key] += st.end_time - st.start_time
        slow = max(records, key=lambda r: walls[r.dagster_run.run_id])
        slow_part = slow.dagster_run.tags.get("dagster/partition")
        label = "ad hoc (no named job)" if job.startswith("__") else job  # e.g. `dagster asset materialize`
        rows.append((label, len(records), duration(_covered_seconds([(r.start_time, r.end_time) for r in records])),
                     ", ".join(f"{k} {duration(v)}" for k, v in steps.items() if v >= 0.5) or "-",
                     f"{slow_part} {duration(walls[slow.dagster_run.run_id])}" if slow_part and len(records) > 1 else "-"))  # fmt: skip
    return text_table(["stage (job)", "runs", "wall", "time per asset (steps)", "slowest partition"], rows)


def judge_section(instance: dg.DagsterInstance) -> str:
    """Per judge: its quality over all train partitions (all pairs pooled) and per partition, worst one named."""
    return "\n".join(_judge_quality(instance, f"judge_scores/{name}") for name in JUDGES)


def _judge_quality(instance: dg.DagsterInstance, asset: str) -> str:
    from unime_assets.judging import score_quality

    tables = partition_tables(instance, asset)
    if not tables:
        return f"  {asset}: no partition materialized"

    def quality(df: pl.DataFrame) -> dict[str, float]:
        return score_quality(df["pos_score"].to_numpy(), [np.asarray(c) for c in df["cand_scores"].to_list()])

    per = {p: quality(t) for p, t in tables.items()}
    overall = quality(pl.concat(list(tables.values()), how="vertical_relaxed"))

    def cells(q: dict[str, float]) -> tuple[str, str, str]:
        return (f"{q['auc_pos_vs_candidates']:.3f}", f"{100 * q['false_negative_rate']:.1f} %",
                f"{100 * q['frac_pos_below_0.5']:.1f} %")  # fmt: skip

    rows = [(f"all {len(tables)} partitions", sum(t.height for t in tables.values()), *cells(overall))]
    rows += [(p, tables[p].height, *cells(q)) for p, q in per.items()]
    worst = min(per, key=lambda p: per[p]["auc_pos_vs_candidates"])
    return (text_table([asset, "queries", "AUC pos vs cands", "false-neg rate", "pos < 0.5"], rows)
            + f"\n  worst partition: {worst} (AUC {per[worst]['auc_pos_vs_candidates']:.3f}, false-negative rate "
            f"{100 * per[worst]['false_negative_rate']:.1f} %)")  # fmt: skip


def mining_section(instance: dg.DagsterInstance) -> str:
    """Mined negatives over all partitions: query-weighted fallback and survivors, candidate-weighted
    false-negative filter rate (each partition's rate is over its retrieved candidates)."""
    tables = partition_tables(instance, "mined_negatives")
    if not tables:
        return "  mined_negatives: no partition materialized"
    records = partition_records(instance, "mined_negatives")
    pools = partition_tables(instance, "candidate_pool")
    rows, weighted, n_cands = [], 0.0, 0
    for p, t in tables.items():
        rate = float(records[p].asset_materialization.metadata["false_negative_filter_rate"].value)
        cands = int(pools[p]["cand_ids"].list.len().sum()) if p in pools else 0
        weighted, n_cands = weighted + rate * cands, n_cands + cands
        rows.append((p, t.height, f"{100 * t['fallback'].mean():.1f} %", f"{t['n_survivors'].mean():.1f}", f"{100 * rate:.1f} %"))
    allt = pl.concat(list(tables.values()), how="vertical_relaxed")
    total = (f"all {len(tables)} partitions", allt.height, f"{100 * allt['fallback'].mean():.1f} %",
             f"{allt['n_survivors'].mean():.1f}", f"{100 * weighted / n_cands:.1f} %" if n_cands else "n/a")  # fmt: skip
    return text_table(["mined_negatives", "queries", "fallback", "mean survivors", "filtered (false neg.)"],
                      [total, *rows])  # fmt: skip


def mmeb_section(instance: dg.DagsterInstance) -> str:
    """Precision@1 (%) per meta-task, IND, OOD and overall for every evaluated model, in report order."""
    from unime_assets.evaluation import AGGREGATE_KEYS, aggregate

    record = _latest(instance, "mmeb_report")
    table = _table(record) if record is not None else None
    if table is None or table.is_empty():
        return "  mmeb_report: not materialized"
    info = SettingsResource().get().eval_catalog
    rows = []
    for (model,), g in table.group_by("model", maintain_order=True):
        agg = aggregate(dict(zip(g["subset"], g["precision_at_1"], strict=True)), info)
        rows.append((model, *(_fmt_pct(agg[k]) for k in AGGREGATE_KEYS)))
    subsets = table["subset"].n_unique()
    return (text_table(["model", *AGGREGATE_KEYS], rows)
            + f"\n  ({subsets} eval subsets; overall = mean over datasets)")  # fmt: skip


def _fmt_pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def registry_section(tracking_uri: str) -> str:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    rows = []
    for name in REGISTERED:
        try:
            versions = client.search_model_versions(f"name='{name}'")
            aliases = client.get_registered_model(name).aliases  # {alias: version}; search results lack them
        except MlflowException:
            versions, aliases = [], {}
        for v in sorted(versions, key=lambda v: int(v.version)):
            overall = (v.tags or {}).get("mmeb.overall", "")
            named = [a for a, n in sorted(aliases.items()) if str(n) == str(v.version)]
            rows.append((name, v.version, ",".join(named) or "-", f"{float(overall):.1f}" if overall else "-",
                         (v.run_id or "")[:8]))  # fmt: skip
    if not rows:
        return "  no registered model versions"
    return text_table(["registered model", "version", "aliases", "MMEB overall P@1", "MLflow run"], rows)


def print_summary(assets: Sequence[str]) -> int:
    """Print every section; 1 when an asset of `assets` was never materialized."""
    from mlflow import MlflowClient

    mlflow = MlflowResource()
    uri = mlflow.uri()
    assets = expand_judges(assets)
    with dg.DagsterInstance.get() as instance:
        lines, missing = assets_section(instance, assets)
        print(f"\nAssets in the Dagster instance at {instance.root_directory}")
        print("\n".join(lines))
        print("\nTime per stage (the runs behind the current materializations)")
        print(timing_section(instance, assets))
        print("\nJudge quality, train positives vs their retrieved candidates")
        print(judge_section(instance))
        print("\nMined negatives")
        print(mining_section(instance))
        print("\nMMEB-format Precision@1 (%)")
        print(mmeb_section(instance))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(mlflow.experiment_name)
    n_runs = len(client.search_runs([exp.experiment_id], max_results=10_000)) if exp else 0
    print(f"\nMLflow ({uri}): {n_runs} runs in experiment '{mlflow.experiment_name}'")
    print(registry_section(uri))
    print(f"\nLook at it: `make ui`, then Dagster {mlflow.dagster_url()} (Assets, Runs) and MLflow "
          f"{mlflow.experiments_url()} (experiment {mlflow.experiment_name}, Models).")  # fmt: skip
    return 1 if missing else 0
