"""MLflow helpers and plots: runs tagged with their Dagster run, asset and partition; registry aliases.

Modules: `mlflow_runs` (experiments, runs, aliases, version tags), `registry` (versions registered
with their lineage in one call, found again by checkpoint fingerprint), `plots` (matplotlib figures
for asset metadata and MLflow artifacts). Below every method package: it imports none of them.
"""

from unime_assets.tracking.mlflow_runs import (
    RunHandle,
    close_runs,
    dagster_tags,
    ensure_experiment,
    run_url,
    set_alias,
    start_run,
    tag_version,
)

__all__ = ["RunHandle", "close_runs", "dagster_tags", "ensure_experiment", "run_url", "set_alias", "start_run", "tag_version"]
