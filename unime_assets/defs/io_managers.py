"""Polars tables as parquet files, written atomically (temporary file renamed into place).

In-repo rather than dagster-polars: that package pins polars < 2 and writes in place; this one
is a few lines and guarantees a reader never sees a half-written table.

A validated table (`ValidatedTable`: the clean rows and the findings set aside) is stored with its
quarantine table in one step: both are written to temporary files and renamed only when both are
complete, so a failed write leaves neither new file (downstream steps load only the clean rows).
"""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from unime_assets.config import unime_home
from unime_assets.data.validation import ValidationResult, write_validated
from unime_assets.defs.metadata import column_schema
from unime_assets.io import write_parquet


@dataclass(frozen=True)
class ValidatedTable:
    """An asset's validation result and where its findings go (an empty findings table included,
    so the side table always describes the current materialization)."""

    result: ValidationResult
    quarantine_path: Path


class PolarsParquetIOManager(dg.ConfigurableIOManager):
    base_dir: str = ""  # empty: $UNIME_HOME/assets/tables

    def _path(self, key: dg.AssetKey, partition: str | None) -> Path:
        root = Path(self.base_dir) if self.base_dir else unime_home() / "assets" / "tables"
        path = root.joinpath(*key.path)
        return path / f"{partition}.parquet" if partition else path.with_suffix(".parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | ValidatedTable) -> None:
        partition = context.partition_key if context.has_partition_key else None
        path = self._path(context.asset_key, partition)
        if isinstance(obj, ValidatedTable):
            write_validated(obj.result, path, obj.quarantine_path)
            obj = obj.result.clean
        elif isinstance(obj, pl.DataFrame):
            write_parquet(obj, path)
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a polars DataFrame, got {type(obj)}"
            )
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path)),
                "dagster/row_count": obj.height,
                "dagster/column_schema": column_schema(context.asset_key.to_user_string(), obj.schema),
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict[str, pl.DataFrame]:
        key = context.upstream_output.asset_key if context.upstream_output else context.asset_key
        if context.has_asset_partitions and not context.has_partition_key:
            return self._load_partitions(context, key)
        partition = None
        if context.has_asset_partitions:
            # An asset check on a partitioned asset sees all partition keys; its run's key is the one.
            keys = context.asset_partition_keys
            partition = keys[0] if len(keys) == 1 else context.partition_key
        path = self._path(key, partition)
        if not path.exists() and self._optional(context):
            return pl.DataFrame()
        if not path.exists():
            raise FileNotFoundError(
                f"{key.to_user_string()} has no stored table at {path}; materialize it first"
            )
        return pl.read_parquet(path)

    @staticmethod
    def _optional(context: dg.InputContext) -> bool:
        """Inputs declared with AssetIn(metadata={"optional": True}) may be absent (read as empty)."""
        return bool((context.definition_metadata or {}).get("optional"))

    def _load_partitions(self, context: dg.InputContext, key: dg.AssetKey) -> dict[str, pl.DataFrame]:
        """An unpartitioned asset reading a partitioned one gets {partition: table} of the partitions
        materialized so far, so backfilling a few subsets is enough to run the rest of the graph."""
        keys = context.asset_partition_keys
        found = {k: p for k in keys if (p := self._path(key, k)).exists()}
        if not found and self._optional(context):
            return {}
        if not found:
            raise FileNotFoundError(
                f"{key.to_user_string()} has none of its {len(keys)} partitions materialized under "
                f"{self._path(key, keys[0]).parent}; backfill at least one partition first"
            )
        missing = [k for k in keys if k not in found]
        if missing:
            context.log.warning(
                f"{key.to_user_string()}: reading {len(found)} partitions; not materialized: {missing}"
            )
        return {k: pl.read_parquet(p) for k, p in found.items()}
