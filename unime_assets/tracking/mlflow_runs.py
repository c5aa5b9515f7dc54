"""MLflow helpers: experiments, runs tagged with their Dagster origin, figures, registry versions."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from unime_assets.tracking import plots

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def dagster_tags(run_id: str, asset_key: str, partition: str | None) -> dict[str, str]:
    return {"dagster.run_id": run_id, "dagster.asset_key": asset_key, "dagster.partition": partition or ""}


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str | None = None) -> str:
    """Create the experiment once (also runs the sqlite schema migrations once, before any parallel work)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass
class RunHandle:
    run_id: str
    experiment_id: str
    url: str

    def log_params(self, params: Mapping[str, object]) -> None:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()}, run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v == v}  # drop NaN
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_figure(self, fig, name: str) -> str:
        """Log to MLflow and return the markdown image for Dagster metadata."""
        MlflowClient().log_figure(self.run_id, fig, f"plots/{name}.png")
        md = plots.to_markdown(fig, name)
        plots.close(fig)
        return md

    def log_text(self, text: str, path: str) -> None:
        MlflowClient().log_text(self.run_id, text, path)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def start_run(
    tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str], *, artifact_root: str | None = None,
    ui_url: str = "http://127.0.0.1:5000",
) -> Iterator[RunHandle]:
    """An active MLflow run (fluent API, so `mlflow.pyfunc.log_model` attaches to it); FAILED on error."""
    mlflow.set_tracking_uri(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment, artifact_root)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=dict(tags)) as run:
        yield RunHandle(run.info.run_id, exp_id, run_url(ui_url, exp_id, run.info.run_id))


def close_runs(tracking_uri: str, experiment: str, status_for: Callable[[str], str | None],
               query: str = "attributes.status = 'RUNNING'") -> list[tuple[str, str]]:  # fmt: skip
    """Terminate the experiment's runs matching `query` whose Dagster run says so: `status_for(dagster
    run id)` returns the MLflow status to set (FINISHED, FAILED, KILLED) or None to leave the run.
    Returns (mlflow run id, status) of each run closed."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    closed = []
    for run in client.search_runs([exp.experiment_id], filter_string=query, max_results=1000):
        status = status_for(run.data.tags.get("dagster.run_id", ""))
        if status is not None and status != run.info.status:
            client.set_terminated(run.info.run_id, status)
            closed.append((run.info.run_id, status))
    return closed


def set_alias(tracking_uri: str, name: str, alias: str, version: str | int) -> None:
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, str(version))


def tag_version(tracking_uri: str, name: str, version: str | int, tags: Mapping[str, str]) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)
