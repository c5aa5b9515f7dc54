"""MLflow helpers: experiments, runs tagged with their Dagster origin, figures, registry versions."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from unime_assets.tracking import plots

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
log = logging.getLogger(__name__)


def dagster_tags(run_id: str, asset_key: str, partition: str | None) -> dict[str, str]:
    return {"dagster.run_id": run_id, "dagster.asset_key": asset_key, "dagster.partition": partition or ""}


# MLflow 3's UI opens an experiment in its GenAI (traces / "Evaluations") view unless the experiment says
# it holds model training; this tag selects the classic experiment-tracking view (runs, metrics, charts).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
NOTE = "mlflow.note.content"  # the description field of experiments and runs in the MLflow UI (markdown)


def ensure_experiment(
    tracking_uri: str, name: str, artifact_root: str | None = None, *, description: str = "",
    tags: Mapping[str, str] | None = None,
) -> str:  # fmt: skip
    """Create the experiment once (also runs the sqlite schema migrations once, before any parallel work),
    with its description and tags; an existing experiment gets the ones it lacks or that changed."""
    client = MlflowClient(tracking_uri=tracking_uri)
    wanted = {**EXPERIMENT_KIND, **(tags or {}), **({NOTE: description} if description else {})}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = _as_location(artifact_root) if artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=wanted)
        except MlflowException:
            # Another run's process created it between our lookup and our insert (two runs starting at
            # once on a shared Postgres store); anything else finds no experiment and is raised.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if is_server_uri(tracking_uri) and not artifact_root and exp.artifact_location.startswith("file:"):
        # An experiment made against the server with a client's folder (by a release before this check):
        # MLflow cannot move it, and its runs' artifacts land on whichever machine runs them.
        log.warning(f"MLflow experiment {name!r} on {tracking_uri} keeps its artifacts in {exp.artifact_location}, "
                    "a folder of the machine that created it, not on the server: runs elsewhere write to their own "
                    "disk. Use a new experiment name (MlflowResource.experiment_name) to store them on the server.")
    for k, v in wanted.items():
        if exp.tags.get(k) != v:
            _set_experiment_tag(client, exp.experiment_id, k, v)
    return exp.experiment_id


def is_server_uri(tracking_uri: str) -> bool:
    """A tracking server (the client talks HTTP to it and it keeps the artifacts), not a store this
    process opens itself (sqlite, a database URI, a folder)."""
    from mlflow.utils.uri import is_databricks_uri

    return urlsplit(tracking_uri).scheme in ("http", "https") or is_databricks_uri(tracking_uri)


def _as_location(artifact_root: str) -> str:
    """A folder as a file URI; a URI (s3://, mlflow-artifacts:/, file:) as it is."""
    if len(urlsplit(artifact_root).scheme) > 1:  # not a Windows drive letter
        return artifact_root
    return Path(artifact_root).resolve().as_uri()


def _set_experiment_tag(client: MlflowClient, experiment_id: str, key: str, value: str) -> None:
    """MLflow's SQL store writes a tag as read-then-insert: when two runs add the same missing tag at once,
    the later insert fails on the primary key (Postgres: UniqueViolation). Then the row exists; read it
    back, and write once more only if the other writer left a different value (an update this time)."""
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        if client.get_experiment(experiment_id).tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


# The UI's query parameter for its classic view; without it a first visit lands in the GenAI view.
CLASSIC_VIEW = "workflowType=machine_learning"


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC_VIEW}"


def artifact_url(ui_url: str, experiment_id: str, run_id: str, path: str) -> str:
    """The artifact's page in the MLflow UI (the run's Artifacts tab, that file selected)."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{CLASSIC_VIEW}"


def artifact_file_url(ui_url: str, run_id: str, path: str) -> str:
    """The artifact's bytes as the MLflow server serves them (an image the Dagster UI can show inline)."""
    return f"{ui_url.rstrip('/')}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}"


@dataclass
class RunHandle:
    run_id: str
    experiment_id: str
    url: str
    ui_url: str = "http://127.0.0.1:5000"

    def artifact_url(self, path: str) -> str:
        return artifact_url(self.ui_url, self.experiment_id, self.run_id, path)

    def artifact_file_url(self, path: str) -> str:
        return artifact_file_url(self.ui_url, self.run_id, path)

    def log_params(self, params: Mapping[str, object]) -> None:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()}, run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v == v}  # drop NaN
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_figure(self, fig, name: str) -> str:
        """Log to MLflow as `plots/<name>.png`; returns a markdown image of it for Dagster metadata.

        The image is served by the MLflow UI (a short link, not the PNG inlined): Dagster renders
        markdown under 1000 characters inline on the asset page, longer markdown only behind a button.
        """
        path = f"plots/{name}.png"
        MlflowClient().log_figure(self.run_id, fig, path, save_kwargs={"dpi": 80, "bbox_inches": "tight"})
        plots.close(fig)
        return f"![{name} (served by the MLflow UI at {self.ui_url})]({self.artifact_file_url(path)})"

    def log_text(self, text: str, path: str) -> None:
        MlflowClient().log_text(self.run_id, text, path)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def start_run(
    tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str], *, artifact_root: str | None = None,
    ui_url: str = "http://127.0.0.1:5000", description: str = "", experiment_description: str = "",
    experiment_tags: Mapping[str, str] | None = None,
) -> Iterator[RunHandle]:  # fmt: skip
    """An active MLflow run (fluent API, so `mlflow.pyfunc.log_model` attaches to it); FAILED on error."""
    mlflow.set_tracking_uri(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment, artifact_root, description=experiment_description,
                               tags=experiment_tags)  # fmt: skip
    tags = {**tags, **({NOTE: description} if description else {})}
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
        yield RunHandle(run.info.run_id, exp_id, run_url(ui_url, exp_id, run.info.run_id), ui_url)


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


def describe_model(tracking_uri: str, name: str, description: str) -> None:
    """The registered model's description (markdown in the Models page), set when it differs."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if client.get_registered_model(name).description != description:
        client.update_registered_model(name, description=description)


def describe_version(tracking_uri: str, name: str, version: str | int, description: str) -> None:
    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).update_model_version(
        name, str(version), description=description
    )


def version_description(tracking_uri: str, name: str, version: str | int) -> str:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(
        name, str(version)
    ).description or ""
