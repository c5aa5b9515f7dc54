"""The ablation job: `ablation_run[variant x seed]` trains and evaluates one embedder per partition from
the shared base, candidate pools and judge scores; `ablation_report` reads every run and writes the
tables (paper Tables 4, 5, 6, 10 and the mining rules), the paired differences and `ablation.json`.

Each run is an MLflow child run under one parent run per campaign (`unime-assets ablate` tags its Dagster
runs with a fresh campaign id; runs launched otherwise, e.g. a backfill from the UI, nest under the
profile's parent). Training runs in the step's process (ablation/run.py says why)."""


import dagster as dg
import polars as pl

from unime_assets.defs.assets._common import run_metadata
from unime_assets.defs.assets.data import concat_partitions
from unime_assets.defs.assets.judges import scores_input
from unime_assets.defs.metadata import figure, readable, table
from unime_assets.defs.partitions import JUDGES, ablation_partitions, judge_key
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.tracking import plots

CAMPAIGN_TAG = "unime/ablation_campaign"  # Dagster run tag: which ablation campaign (MLflow parent) a run is in


def _every_partition(key: str | dg.AssetKey, optional: bool = False) -> dg.AssetIn:
    """An input reading all partitions of a train/eval-partitioned asset as {subset: table}."""
    meta = {"all_partitions": True, **({"optional": True} if optional else {})}
    return dg.AssetIn(key=key, partition_mapping=dg.AllPartitionMapping(), metadata=meta)


def _ins(judges: list[str]) -> dict[str, dg.AssetIn]:
    return {
        "mmeb_train": _every_partition("mmeb_train"),
        "mmeb_eval": _every_partition("mmeb_eval"),
        "candidate_index": dg.AssetIn("candidate_index"),
        "candidate_pool": _every_partition("candidate_pool"),
        "judge_ensemble": _every_partition("judge_ensemble", optional=True),
        **{scores_input(n): _every_partition(judge_key("judge_scores", n), optional=True) for n in judges},
    }


def _campaign(context: dg.AssetExecutionContext, profile: str) -> str:
    return context.run.tags.get(CAMPAIGN_TAG) or f"ablation:{profile}"


def _partition(context: dg.AssetExecutionContext) -> tuple[str, int]:
    key = context.partition_key
    dims = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else dict(
        zip(["seed", "variant"], str(key).split("|"), strict=True))  # fmt: skip
    return dims["variant"], int(dims["seed"])


def ablation_run_asset(judges: list[str], partitions_def: dg.MultiPartitionsDefinition) -> dg.AssetsDefinition:
    """`ablation_run` for a profile's judges and (variant x seed) partitions (fixed when the code loads)."""

    @dg.asset(name="ablation_run", group_name="ablation", kinds={"pytorch", "mlflow"}, partitions_def=partitions_def,
              ins=_ins(judges), deps=["pretrained_base"],
              description="One ablation run: the variant's mining rule and judge on the shared candidate pools and "
              "judge scores, the embedder trained from the shared base with the profile's budget and the variant's "
              "loss / k / τ, seeded by the partition's seed, then evaluated on every eval subset (P@1). Training "
              "runs in this step's process (one rank on the CPU), with the code of the torchrun ranks.")  # fmt: skip
    def ablation_run(context: dg.AssetExecutionContext, settings: SettingsResource, mlflow: MlflowResource,
                     mmeb_train: dict[str, pl.DataFrame], mmeb_eval: dict[str, pl.DataFrame],
                     candidate_index: pl.DataFrame, candidate_pool: dict[str, pl.DataFrame],
                     judge_ensemble: dict[str, pl.DataFrame], **scores: dict[str, pl.DataFrame]) -> dg.Output:  # fmt: skip
        from unime_assets.ablation import (
            ablation_variants,
            mining_scores,
            train_and_evaluate,
            training_set_for,
            variant_settings,
        )

        s = settings.get()
        variant, seed = _partition(context)
        vs = variant_settings(s, variant, seed)
        # Like training_set: the train subsets whose mining chain is materialized (a warning names the rest).
        subsets = [p for p in s.train_subset_names if p in mmeb_train and p in candidate_pool]
        if not subsets:
            raise ValueError("ablation_run: no train subset has both mmeb_train and candidate_pool materialized")
        if skipped := [p for p in s.train_subset_names if p not in subsets]:
            context.log.warning(f"ablation_run: training on {subsets} only; not materialized: {skipped}")
        train = pl.concat([mmeb_train[p] for p in subsets])
        by_judge = {n: scores.get(scores_input(n), {}) for n in s.judge_names}
        table_scores = mining_scores(vs, by_judge, judge_ensemble, subsets)
        parent = mlflow.parent_run(_campaign(context, s.profile), f"ablation ({s.profile})",
                                   tags={"unime.job": "ablation", "unime.profile": s.profile})  # fmt: skip
        with mlflow.run(context, parent_run_id=parent) as run:
            run.set_tags({"unime.variant": variant, "unime.seed": seed})
            run.log_params({"variant": variant, "seed": seed, "overrides": ablation_variants(s)[variant].overrides,
                            "loss": vs.embedder.loss, "k_negatives": vs.embedder.k_negatives,
                            "temperature": vs.embedder.temperature, "mining.strategy": vs.mining.strategy,
                            "mining.judge": vs.mining_judge, "steps": vs.embedder.steps,
                            "batch_size": vs.embedder.batch_size, "lr": vs.embedder.lr, "base": vs.embedder_base_path,
                            "torch_threads": vs.torch_threads, "in_process": True})  # fmt: skip
            ts = training_set_for(vs, train, candidate_index, {p: candidate_pool[p] for p in subsets}, table_scores)
            work = s.asset_dir("ablation") / "work" / f"{variant.replace(':', '_')}-seed{seed}"
            context.log.info(f"ablation {variant} seed {seed}: training on {ts.height} queries")
            res = train_and_evaluate(vs, ts, concat_partitions(mmeb_eval), work, mlflow_run_id=run.run_id,
                                     tracking_uri=mlflow.uri())  # fmt: skip
            agg = {k: round(100 * v, 4) for k, v in res.aggregates.items()}
            run.log_metrics({**{f"p_at_1.{k}": v for k, v in agg.items()},
                             **{f"p_at_1.{n}": 100 * p for n, p in res.per_subset.items()},
                             "train_seconds": res.train_seconds, "cpu_seconds": res.cpu_seconds})  # fmt: skip
            curve = figure(run, plots.loss_curve(res.losses, f"{variant} seed {seed}"), "loss", "loss_curve")
        context.log.info(f"ablation {variant} seed {seed}: overall P@1 {agg['overall']:.2f}")
        info = s.eval_catalog
        per_subset = pl.DataFrame([{"variant": variant, "seed": seed, "subset": n, "meta_task": info[n].meta_task,
                               "split": info[n].split, "precision_at_1": p} for n, p in res.per_subset.items()])  # fmt: skip
        return dg.Output(per_subset, metadata=readable({
            "variant": variant, "seed": seed, **{k: v for k, v in agg.items() if v == v},
            "first_loss": res.losses[0], "final_loss": res.losses[-1], "queries": res.queries,
            "fallback_fraction": res.fallback_fraction, "train_seconds": round(res.train_seconds, 1),
            "cpu_seconds": round(res.cpu_seconds, 1), **curve,
            "mlflow_parent_run_id": parent, **run_metadata(run),
        }))  # fmt: skip

    return ablation_run


ablation_run = ablation_run_asset(JUDGES, ablation_partitions)


@dg.asset(group_name="ablation", kinds={"polars", "mlflow", "json"},
          description="The ablation's tables: per variant overall P@1 mean ± std over seeds (and IND / OOD), the "
          "difference to the baseline paired by seed with a 95 % t-interval, one table per paper table, a plot; "
          "writes <artifacts>/ablation/ablation.json.")  # fmt: skip
def ablation_report(context: dg.AssetExecutionContext, ablation_run: dict[str, pl.DataFrame],
                    settings: SettingsResource, mlflow: MlflowResource) -> dg.Output:  # fmt: skip
    from unime_assets.ablation import (
        ablation_plot,
        ablation_variants,
        summary_rows,
        table_markdown,
        variant_names,
        write_ablation_json,
    )
    from unime_assets.evaluation import aggregate

    s = settings.get()
    variants, names, baseline = ablation_variants(s), variant_names(s), s.ablation.baseline
    results: dict[str, dict[int, dict[str, float]]] = {}
    for run_table in ablation_run.values():
        variant, seed = run_table["variant"][0], int(run_table["seed"][0])
        per = dict(zip(run_table["subset"], run_table["precision_at_1"], strict=True))
        results.setdefault(variant, {})[seed] = {k: 100 * v for k, v in aggregate(per, s.eval_catalog).items()}
    ordered = {n: results[n] for n in names if n in results}
    if not ordered:
        raise ValueError("ablation_report: no ablation_run partition of this profile's variants is materialized")
    expected = {(n, seed) for n in names for seed in s.ablation.seeds}
    done = {(n, seed) for n, by_seed in ordered.items() for seed in by_seed}
    missing = sorted(expected - done)
    if missing:
        context.log.warning(f"ablation_report: {len(missing)} run(s) not materialized: {missing}")
    rows = summary_rows(ordered, baseline)
    tables = table_markdown(rows, {n: variants[n] for n in ordered}, baseline)
    e = s.embedder
    budget = {"steps": e.steps, "batch_size": e.batch_size, "lr": e.lr, "warmup_steps": e.warmup_steps,
              "torch_threads": s.torch_threads}  # fmt: skip
    path = write_ablation_json(rows, s.asset_dir("ablation") / "ablation.json", baseline=baseline,
                               tables={t: [v for v in ordered if t in variants[v].rows] for t in tables},
                               extra={"profile": s.profile, "budget": budget,
                                      "labels": {v: variants[v].rows for v in ordered},
                                      "missing": [list(m) for m in missing]})  # fmt: skip
    report_md = "\n\n".join(tables.values())
    parent = mlflow.parent_run(_campaign(context, s.profile), f"ablation ({s.profile})",
                               tags={"unime.job": "ablation", "unime.profile": s.profile})  # fmt: skip
    with mlflow.run(context, parent_run_id=parent) as run:
        run.log_params({"baseline": baseline, "variants": ",".join(ordered), "seeds": s.ablation.seeds,
                        "missing_runs": len(missing), **budget})  # fmt: skip
        run.log_metrics({f"{r['variant']}.mean": r["mean"] for r in rows})
        run.log_text(report_md, "ablation.md")
        run.log_text(path.read_text(), "ablation.json")
        chart = figure(run, ablation_plot(rows), "ablation", "chart")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow.uri())  # the campaign's parent holds the result too
    client.log_text(parent, report_md, "ablation.md")
    client.log_artifact(parent, str(path))
    context.log.info(f"ablation report: {path}")
    summary = pl.DataFrame([{"variant": r["variant"], "seeds": len(r["seeds"]), "mean": r["mean"], "std": r["std"],
                             "delta_vs_baseline": (r["delta_vs_baseline"] or {}).get("mean")} for r in rows])  # fmt: skip
    def ci(r: dict, i: int) -> float | None:
        d = r["delta_vs_baseline"]
        return d["ci95"][i] if d and d["ci95"] else None

    variants_table = table(
        [(r["variant"], len(r["seeds"]), r["mean"], r["std"], (r["delta_vs_baseline"] or {}).get("mean"), ci(r, 0),
          ci(r, 1)) for r in rows],
        [("variant", "string", "what changes from the base recipe (one factor)"),
         ("seeds", "int", "seeds run"), ("overall mean", "float", "overall P@1 (%), mean over seeds"),
         ("std", "float", "sample standard deviation over seeds"),
         ("vs baseline", "float", f"mean difference to {baseline}, paired by seed (points)"),
         ("ci95 low", "float", "95 % t-interval of the paired difference"), ("ci95 high", "float", "")],
        digits=2,
    )  # fmt: skip
    return dg.Output(summary, metadata=readable({
        "variants": variants_table, **{f"table_{t}": dg.MetadataValue.md(md) for t, md in tables.items()}, **chart,
        "ablation_json": dg.MetadataValue.path(str(path)), "runs": len(done), "missing_runs": len(missing),
        "overall": dg.MetadataValue.json({r["variant"]: r["mean"] for r in rows}), "mlflow_parent_run_id": parent,
        **run_metadata(run),
    }))  # fmt: skip
