"""Small helpers shared by the asset modules (run metadata, lineage lookups, step logging); formatting
metadata for the UI is in defs/metadata.py."""

import contextlib
import time
from collections.abc import Iterator, Sequence

import dagster as dg
import polars as pl

from unime_assets.tracking import RunHandle

TRAIN_ITEMS = [("qry", "qry_image_path"), ("pos_text", "pos_image_path")]  # (text, image) columns of a row

def run_metadata(run: RunHandle) -> dict[str, dg.MetadataValue]:
    return {"mlflow_run_id": dg.MetadataValue.text(run.run_id), "mlflow_run": dg.MetadataValue.url(run.url)}


def upstream_run_ids(context: dg.AssetExecutionContext, names: Sequence[str]) -> dict[str, str]:
    """Dagster run id of the latest materialization of each upstream asset (`name` or `prefix/name`),
    for lineage params/tags."""
    out = {}
    for name in names:
        event = context.instance.get_latest_materialization_event(dg.AssetKey.from_user_string(name))
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


@contextlib.contextmanager
def naming_rows(what: str, table: pl.DataFrame, items: Sequence[tuple[str, str]], row_id: str) -> Iterator[None]:
    """Re-raise an item failure (models.encoding.ItemError) naming `what` (asset and subset), the
    rows of `table` that hold the item (their `row_id`), the field and the image path.

    `items`: the table's (text column, image column) pairs, e.g. [("qry", "qry_image_path"), ...]."""
    from unime_assets.data.errors import DataValidationError
    from unime_assets.models.encoding import ItemError

    try:
        yield
    except ItemError as e:
        where = []
        for text_col, image_col in items:
            if image_col not in table.columns:
                continue
            listed = isinstance(table.schema[image_col], pl.List)  # eval candidates: lists per row

            def has(col: str, value: str, listed: bool = listed) -> pl.Expr:
                return pl.col(col).list.contains(value) if listed else pl.col(col) == value

            hit = table.filter(has(image_col, e.image) if e.image else has(text_col, e.text))
            if e.text and e.image:
                hit = hit.filter(has(text_col, e.text))
            if hit.height:
                ids = hit[row_id].head(5).to_list()
                where.append(f"field {image_col!r} of {hit.height} row(s) ({row_id} {ids}{'...' if hit.height > 5 else ''})")
        rows = "; ".join(where) or "row not found in the input table"
        raise DataValidationError(f"{what}: {rows}: {e}", field=None) from e
