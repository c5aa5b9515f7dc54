"""MMEB-train and MMEB-eval tables (real folders or the synthetic default, same readers)."""


import dagster as dg
import polars as pl

from unime_assets.data.mmeb import load_eval, load_train
from unime_assets.defs.assets._common import markdown_table, run_metadata
from unime_assets.defs.resources import MlflowResource, SettingsResource


@dg.asset(group_name="data", kinds={"polars", "parquet"},
          description="Training pairs of every configured MMEB-train subset (pair_id = stable row hash).")  # fmt: skip
def mmeb_train(context: dg.AssetExecutionContext, settings: SettingsResource, mlflow: MlflowResource):
    s = settings.get()
    df = load_train(s.train_root, s.train_subset_names, split=s.train_split, max_per_subset=s.max_per_subset)
    if df.is_empty():
        raise ValueError(f"no training rows read from {s.train_root} for subsets {s.train_subset_names}")
    counts = df.group_by("subset", maintain_order=True).len()
    with mlflow.run(context) as run:
        run.log_params({"train_root": s.train_root, "subsets": ",".join(s.train_subset_names),
                        "split": s.train_split, "max_per_subset": s.max_per_subset})  # fmt: skip
        run.log_metrics({"rows": df.height, "subsets": counts.height})
        table = markdown_table(["subset", "pairs"], counts.rows())
        run.log_text(table, "counts.md")
    context.log.info(f"{df.height} training pairs from {counts.height} subsets")
    return dg.Output(df, metadata={"rows": df.height, "per_subset": dg.MetadataValue.md(table), **run_metadata(run)})


@dg.asset(group_name="data", kinds={"polars", "parquet"},
          description="Evaluation rows of every configured MMEB-eval subset; candidate 0 is the ground truth.")  # fmt: skip
def mmeb_eval(context: dg.AssetExecutionContext, settings: SettingsResource, mlflow: MlflowResource):
    s = settings.get()
    df = load_eval(s.eval_root, s.eval_subset_names)
    info = s.eval_catalog
    counts = df.group_by("subset", maintain_order=True).agg(
        pl.len().alias("rows"), pl.col("tgt_text").list.len().mean().alias("mean_candidates")
    )
    rows = [(n, info[n].meta_task, info[n].split, r, c) for n, r, c in counts.rows()]
    table = markdown_table(["subset", "meta-task", "split", "rows", "candidates/row"], rows)
    with mlflow.run(context) as run:
        run.log_params({"eval_root": s.eval_root, "subsets": ",".join(s.eval_subset_names)})
        run.log_metrics({"rows": df.height, "subsets": counts.height})
        run.log_text(table, "counts.md")
    return dg.Output(df, metadata={"rows": df.height, "per_subset": dg.MetadataValue.md(table), **run_metadata(run)})
