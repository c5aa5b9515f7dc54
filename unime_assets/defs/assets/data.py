"""MMEB-train and MMEB-eval tables, one partition per subset (real folders or the synthetic default)."""

import dagster as dg
import polars as pl

from unime_assets.data.mmeb import load_eval, load_train
from unime_assets.defs.assets._common import run_metadata
from unime_assets.defs.partitions import (
    check_partition,
    eval_partitions,
    partition_metadata,
    train_partitions,
)
from unime_assets.defs.resources import MlflowResource, SettingsResource


@dg.asset(group_name="data", kinds={"polars", "parquet"}, partitions_def=train_partitions,
          description="Training pairs of one MMEB-train subset (pair_id = stable row hash), capped at "
          "max_per_subset rows like VLM2Vec's num_sample_per_subset.")  # fmt: skip
def mmeb_train(context: dg.AssetExecutionContext, settings: SettingsResource, mlflow: MlflowResource):
    s = settings.get()
    subset = context.partition_key
    check_partition(s, subset, "train")
    info = partition_metadata(s, subset, "train")
    df = load_train(s.train_root, [subset], split=s.train_split, max_per_subset=s.max_per_subset)
    if df.is_empty():
        raise ValueError(f"no training rows read from {s.train_root}/{subset}")
    with mlflow.run(context) as run:
        run.set_tags({f"unime.{k}": v for k, v in info.items()})
        run.log_params({"train_root": s.train_root, "subset": subset, "split": s.train_split,
                        "max_per_subset": s.max_per_subset})  # fmt: skip
        run.log_metrics({"rows": df.height})
    context.log.info(f"{subset}: {df.height} training pairs")
    return dg.Output(df, metadata={"rows": df.height, **info, **run_metadata(run)})


@dg.asset(group_name="data", kinds={"polars", "parquet"}, partitions_def=eval_partitions,
          description="Evaluation rows of one MMEB-eval subset; candidate 0 is the ground truth.")  # fmt: skip
def mmeb_eval(context: dg.AssetExecutionContext, settings: SettingsResource, mlflow: MlflowResource):
    s = settings.get()
    subset = context.partition_key
    check_partition(s, subset, "eval")
    info = partition_metadata(s, subset, "eval")
    df = load_eval(s.eval_root, [subset])
    mean_cands = float(df["tgt_text"].list.len().mean()) if df.height else 0.0
    with mlflow.run(context) as run:
        run.set_tags({f"unime.{k}": v for k, v in info.items()})
        run.log_params({"eval_root": s.eval_root, "subset": subset})
        run.log_metrics({"rows": df.height, "mean_candidates": mean_cands})
    return dg.Output(
        df, metadata={"rows": df.height, "mean_candidates": mean_cands, **info, **run_metadata(run)}
    )


def concat_partitions(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Partition tables in partition order, as one table (how unpartitioned assets read them)."""
    return pl.concat(list(tables.values()), how="vertical") if tables else pl.DataFrame()
