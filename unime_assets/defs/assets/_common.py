"""Small helpers shared by the asset modules (metadata, lineage lookups, markdown tables)."""

import contextlib
from collections.abc import Iterator, Sequence

import dagster as dg
import polars as pl

from unime_assets.tracking import RunHandle

TRAIN_ITEMS = [("qry", "qry_image_path"), ("pos_text", "pos_image_path")]  # (text, image) columns of a row

def run_metadata(run: RunHandle) -> dict[str, dg.MetadataValue]:
    return {"mlflow_run_id": dg.MetadataValue.text(run.run_id), "mlflow_run": dg.MetadataValue.url(run.url)}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def upstream_run_ids(context: dg.AssetExecutionContext, names: Sequence[str]) -> dict[str, str]:
    """Dagster run id of the latest materialization of each upstream asset (`name` or `prefix/name`),
    for lineage params/tags."""
    out = {}
    for name in names:
        event = context.instance.get_latest_materialization_event(dg.AssetKey.from_user_string(name))
        out[f"upstream.{name}.run_id"] = event.run_id if event is not None else ""
    return out


def step_logger(context: dg.AssetExecutionContext, run: RunHandle, every: int = 10):
    """Per-step metrics to MLflow, and a line to the Dagster log every `every` steps."""

    def log(step: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step=step)
        if step % every == 0:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

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
