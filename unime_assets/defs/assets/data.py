"""MMEB-train and MMEB-eval tables, one partition per subset (real folders or the synthetic default)."""

import dagster as dg
import polars as pl

from unime_assets.data.mmeb import load_eval, load_train
from unime_assets.data.validation import ValidationResult, validate_eval, validate_train
from unime_assets.defs.assets._common import run_metadata
from unime_assets.defs.automation import source_files
from unime_assets.defs.io_managers import ValidatedTable
from unime_assets.defs.metadata import readable
from unime_assets.defs.partitions import (
    check_partition,
    eval_partitions,
    partition_metadata,
    train_partitions,
)
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.fingerprints import files_stat_fingerprint


def _partition(context: dg.AssetExecutionContext, settings: SettingsResource, kind: str):
    """(settings, subset, its catalog metadata) for this run's partition, refused if the profile lacks it."""
    s = settings.get()
    check_partition(s, context.partition_key, kind)
    return s, context.partition_key, partition_metadata(s, context.partition_key, kind)


@dg.asset(group_name="data", kinds={"polars", "parquet"}, partitions_def=train_partitions,
          description="Training pairs of one MMEB-train subset (pair_id = stable row hash), capped at "
          "max_per_subset rows like VLM2Vec's num_sample_per_subset.")  # fmt: skip
def mmeb_train(context: dg.AssetExecutionContext, settings: SettingsResource, mlflow: MlflowResource):
    s, subset, info = _partition(context, settings, "train")
    v = s.validation
    raw = load_train(s.train_root, [subset], split=s.train_split, max_per_subset=s.max_per_subset, provenance=True,
                     dedup=False)  # fmt: skip
    if raw.is_empty():
        raise ValueError(f"no training rows read from {s.train_root}/{subset}")
    res = validate_train(raw, s.train_image_root, policy=v.train_policy, check_images=v.check_images,
                         max_text_chars=v.max_text_chars)  # fmt: skip
    df = res.clean
    quarantine = s.asset_dir("quarantine") / "mmeb_train" / f"{subset}.parquet"
    with mlflow.run(context) as run:
        run.set_tags({f"unime.{k}": v for k, v in info.items()})
        run.log_params({"train_root": s.train_root, "subset": subset, "split": s.train_split,
                        "max_per_subset": s.max_per_subset, **v.model_dump()})  # fmt: skip
        meta = _validation_outputs(context, run, res, quarantine)
    context.log.info(f"{subset}: {df.height} training pairs, {res.counts.get('quarantined', 0)} quarantined")
    # What the nightly schedule compares to notice changed source files (defs/automation.py).
    fingerprint = files_stat_fingerprint(source_files(s.train_root, subset, s.train_split))
    return dg.Output(ValidatedTable(res, quarantine), metadata=readable({
        "rows": df.height, "source_fingerprint": fingerprint, **info, **meta, **run_metadata(run)}))  # fmt: skip


@dg.asset(group_name="data", kinds={"polars", "parquet"}, partitions_def=eval_partitions,
          description="Evaluation rows of one MMEB-eval subset; candidate 0 is the ground truth.")  # fmt: skip
def mmeb_eval(context: dg.AssetExecutionContext, settings: SettingsResource, mlflow: MlflowResource):
    s, subset, info = _partition(context, settings, "eval")
    v = s.validation
    res = validate_eval(load_eval(s.eval_root, [subset], strict=False, provenance=True), s.eval_image_root,
                        policy=v.eval_policy, check_images=v.check_images, max_text_chars=v.max_text_chars)  # fmt: skip
    df = res.clean
    mean_cands = float(df["tgt_text"].list.len().mean()) if df.height else 0.0
    quarantine = s.asset_dir("quarantine") / "mmeb_eval" / f"{subset}.parquet"
    with mlflow.run(context) as run:
        run.set_tags({f"unime.{k}": v for k, v in info.items()})
        run.log_params({"eval_root": s.eval_root, "subset": subset, **v.model_dump()})
        run.log_metrics({"mean_candidates": mean_cands})
        meta = _validation_outputs(context, run, res, quarantine)
    return dg.Output(ValidatedTable(res, quarantine), metadata=readable({
        "rows": df.height, "mean_candidates": mean_cands, **info, **meta, **run_metadata(run)}))  # fmt: skip


def _validation_outputs(context: dg.AssetExecutionContext, run, res: ValidationResult, quarantine_path) -> dict:
    """Counts to metadata and MLflow. The side table itself is written by the IO manager together
    with the asset's table (ValidatedTable): both or neither."""
    counts = res.counts
    run.log_metrics({f"validation.{k}": c for k, c in counts.items()})
    meta: dict = {f"validation/{k}": c for k, c in counts.items() if c}
    meta["quarantine_table"] = dg.MetadataValue.path(str(quarantine_path))
    if res.quarantine.height:
        context.log.warning(f"{res.quarantine.height} finding(s) in {res.counts['quarantined']} row(s) set "
                            f"aside to {quarantine_path}")  # fmt: skip
    return meta


def concat_partitions(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Partition tables in partition order, as one table (how unpartitioned assets read them)."""
    return pl.concat(list(tables.values()), how="vertical") if tables else pl.DataFrame()
