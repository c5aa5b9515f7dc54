"""Small helpers shared by the asset modules (run metadata, lineage lookups, step logging); formatting
metadata for the UI is in defs/metadata.py."""

from collections.abc import Sequence

import dagster as dg

from unime_assets.tracking import RunHandle


def run_metadata(run: RunHandle) -> dict[str, dg.MetadataValue]:
    return {"mlflow_run_id": dg.MetadataValue.text(run.run_id), "mlflow_run": dg.MetadataValue.url(run.url)}


def upstream_run_ids(context: dg.AssetExecutionContext, names: Sequence[str]) -> dict[str, str]:
    """Dagster run id of the latest materialization of each upstream asset, for lineage params/tags."""
    out = {}
    for name in names:
        event = context.instance.get_latest_materialization_event(dg.AssetKey(name))
        out[f"upstream.{name}.run_id"] = event.run_id if event is not None else ""
    return out


def step_logger(context: dg.AssetExecutionContext, run: RunHandle, every: int = 10):
    """Per-step metrics to MLflow, and a line to the Dagster log every `every` steps."""

    def log(step: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step=step)
        if step % every == 0:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    return log
