"""The Dagster layer, and the only package that imports Dagster: assets, checks, resources, jobs.

Modules: `assets/` (one module per stage: data, models, mining (stages 1-3), training (4-5),
evaluation (6)), `checks` (asset checks), `partitions` (one partition per MMEB subset),
`resources` (settings and MLflow), `io_managers` (polars tables as parquet), `automation` (jobs,
schedule, sensors, declarative automation). An asset reads its inputs, calls the method packages,
writes its output, logs to MLflow and returns metadata.
"""

from unime_assets.defs import slots as _slots

_slots.install()  # every process that executes these assets waits for slots without spinning
