"""The code location: every asset, check and resource of the pipeline, plus its automation (jobs,
schedule, sensors, automation conditions: defs/automation.py)."""

from __future__ import annotations

import os

import dagster as dg

from unime_assets.defs import checks
from unime_assets.defs.assets import data, evaluation, judges, mining, models, training
from unime_assets.defs.automation import with_automation
from unime_assets.defs.io_managers import PolarsParquetIOManager
from unime_assets.defs.resources import MlflowResource, SettingsResource, mlflow_run_follows_step
from unime_assets.quiet import install as quiet_logs

quiet_logs()  # every Dagster process (webserver, daemon, run worker) loads this module before a step runs


def _executor() -> dg.ExecutorDefinition:
    """UNIME_EXECUTOR: in_process (default: the tiny models load in seconds and each subprocess would
    pay ~10 s of torch/transformers imports), multiprocess (steps in processes), or, on a cluster, k8s
    (each step its own pod; dagster-k8s) or docker (each step its own container; dagster-docker)."""
    kind = os.environ.get("UNIME_EXECUTOR", "in_process")
    if kind == "multiprocess":
        return dg.multiprocess_executor
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if kind == "docker":
        from dagster_docker import docker_executor

        return docker_executor
    return dg.in_process_executor


def build_definitions() -> dg.Definitions:
    assets = dg.load_assets_from_modules([data, models, judges, mining, training, evaluation])
    # a step that fails after its MLflow run ended (the table write) marks that run FAILED
    assets = [a.with_attributes(hook_defs={mlflow_run_follows_step}) for a in assets]
    return with_automation(
        dg.Definitions(
            assets=assets,
            asset_checks=dg.load_asset_checks_from_modules([checks]),
            resources={
                "settings": SettingsResource(),
                "mlflow": MlflowResource(),
                "io_manager": PolarsParquetIOManager(),
            },
            executor=_executor(),
        )
    )


defs = build_definitions()
