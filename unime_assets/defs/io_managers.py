"""Polars tables as parquet files, written atomically (temporary file renamed into place).

In-repo rather than dagster-polars: that package pins polars < 2 and writes in place; this one
is a few lines and guarantees a reader never sees a half-written table.
"""


from pathlib import Path

import dagster as dg
import polars as pl

from unime_assets.config import unime_home
from unime_assets.io import write_parquet


class PolarsParquetIOManager(dg.ConfigurableIOManager):
    base_dir: str = ""  # empty: $UNIME_HOME/assets/tables

    def _path(self, key: dg.AssetKey, partition: str | None) -> Path:
        root = Path(self.base_dir) if self.base_dir else unime_home() / "assets" / "tables"
        path = root.joinpath(*key.path)
        return path / f"{partition}.parquet" if partition else path.with_suffix(".parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a polars DataFrame, got {type(obj)}")
        partition = context.partition_key if context.has_partition_key else None
        path = write_parquet(obj, self._path(context.asset_key, partition))
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path)),
                "dagster/row_count": obj.height,
                "dagster/column_schema": dg.TableSchema(
                    columns=[dg.TableColumn(name, str(dtype)) for name, dtype in obj.schema.items()]
                ),
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        key = context.upstream_output.asset_key if context.upstream_output else context.asset_key
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(key, partition)
        if not path.exists():
            raise FileNotFoundError(f"{key.to_user_string()} has no stored table at {path}; materialize it first")
        return pl.read_parquet(path)
