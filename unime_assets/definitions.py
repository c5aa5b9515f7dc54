"""The code location: every asset, check and resource of the pipeline."""

from __future__ import annotations

import os

import dagster as dg

from unime_assets.defs import checks
from unime_assets.defs.assets import data, evaluation, mining, models, training
from unime_assets.defs.io_managers import PolarsParquetIOManager
from unime_assets.defs.resources import MlflowResource, SettingsResource


def build_definitions() -> dg.Definitions:
    # In-process by default: the tiny models load in seconds and each subprocess would pay ~10 s of
    # torch/transformers imports. Set UNIME_EXECUTOR=multiprocess to isolate steps in processes.
    executor = dg.multiprocess_executor if os.environ.get("UNIME_EXECUTOR") == "multiprocess" else dg.in_process_executor
    return dg.Definitions(
        assets=dg.load_assets_from_modules([data, models, mining, training, evaluation]),
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        resources={
            "settings": SettingsResource(),
            "mlflow": MlflowResource(),
            "io_manager": PolarsParquetIOManager(),
        },
        executor=executor,
    )


defs = build_definitions()
