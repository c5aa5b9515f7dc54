"""Small helpers shared by the asset modules (run metadata, lineage lookups, step logging); formatting
metadata for the UI is in defs/metadata.py."""

import time
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


def step_logger(context: dg.AssetExecutionContext, run: RunHandle, total: int):
    """Per-step metrics to MLflow, and about ten lines to the Dagster log: step of total, metrics, ETA."""
    every = max(1, total // 10)
    first: dict[str, float] = {}  # the first step this process runs (later than 0 after a resume), its time

    def log(step: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step=step)
        first.setdefault("step", step)
        first.setdefault("t", time.monotonic())
        done = step + 1
        if step % every == 0 or done == total:
            ran = done - first["step"]
            eta = (time.monotonic() - first["t"]) / ran * (total - done)
            context.log.info(f"step {done}/{total}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                             + f" (ETA {eta:.0f}s)")  # fmt: skip

    return log
