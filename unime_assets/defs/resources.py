"""Resources: the typed settings profile and an MLflow tracker tagged with the Dagster origin."""

import contextlib
import os
from collections.abc import Iterator

import dagster as dg
import yaml

from unime_assets import tracking
from unime_assets.config import Settings, SettingsError, default_settings_file, load_settings, unime_home

# Dagster run outcome -> the MLflow status its runs end with (a run still going: None, left alone).
MLFLOW_STATUS = {dg.DagsterRunStatus.SUCCESS: "FINISHED", dg.DagsterRunStatus.FAILURE: "FAILED",
                 dg.DagsterRunStatus.CANCELED: "KILLED"}  # fmt: skip


class SettingsResource(dg.ConfigurableResource):
    """Where the settings YAML is (empty: $UNIME_SETTINGS or the embedded default) plus overrides.

    At the start of every run (before any step) the profile is checked as a whole: every setting in
    range, every model path, data root and subset folder present and readable (defs/preflight.py);
    the run fails with one message naming each setting and path at fault."""

    settings_file: str = ""
    overrides_yaml: str = ""  # e.g. "embedder: {steps: 10}" from the Launchpad

    def get(self) -> Settings:
        try:
            overrides = yaml.safe_load(self.overrides_yaml) if self.overrides_yaml.strip() else None
        except yaml.YAMLError as exc:
            raise SettingsError(f"settings resource: overrides_yaml is not valid YAML: {exc}") from None
        s = load_settings(self.settings_file or default_settings_file(), overrides)
        from unime_assets.models.loading import set_torch_threads, trust_remote_code_for

        trust_remote_code_for(s.remote_code_paths())  # the one place every loader reads it from
        set_torch_threads(s.torch_threads)  # every asset reads its settings here before any torch work
        return s

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if context.dagster_run is None:  # schedules and sensors read only some fields
            return
        from unime_assets.defs.preflight import preflight

        preflight(self.get())


class MlflowResource(dg.ConfigurableResource):
    """One MLflow run per materialization, tagged dagster.run_id / dagster.asset_key / dagster.partition and
    dagster.run_url (a link back to the Dagster run), described in markdown on the run page."""

    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI or sqlite under $UNIME_HOME/mlflow
    experiment_name: str = "unime-v2"
    artifact_root: str = ""
    ui_url: str = ""  # the MLflow UI links point at; empty: $MLFLOW_UI_URL or http://127.0.0.1:5000 (make ui)
    dagster_ui_url: str = ""  # the Dagster UI; empty: $DAGSTER_UI_URL or http://127.0.0.1:3000 (make ui)

    def mlflow_url(self) -> str:
        return (self.ui_url or os.environ.get("MLFLOW_UI_URL") or "http://127.0.0.1:5000").rstrip("/")

    def dagster_url(self) -> str:
        return (self.dagster_ui_url or os.environ.get("DAGSTER_UI_URL") or "http://127.0.0.1:3000").rstrip("/")

    def experiments_url(self) -> str:
        """The MLflow UI on its classic experiment-tracking view (runs, metrics), not the GenAI one."""
        return f"{self.mlflow_url()}/#/experiments?{tracking.CLASSIC_VIEW}"

    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        db = unime_home() / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    def artifacts(self) -> str:
        return self.artifact_root or str(unime_home() / "mlflow" / "artifacts")

    def artifact_location(self) -> str | None:
        """Where a new experiment keeps its artifacts: `artifact_root` when set; for a store this process
        opens itself (sqlite, a database URI) the folder under $UNIME_HOME; for a tracking server none,
        so the server's own applies (with `--serve-artifacts`: uploaded through it to its
        `--artifacts-destination`). A client's folder there would be one machine's disk, which the
        server's UI and the other machines' runs cannot read."""
        if self.artifact_root:
            return self.artifact_root
        return None if tracking.is_server_uri(self.uri()) else self.artifacts()

    def close_stale_runs(self, instance: dg.DagsterInstance, current_run_id: str) -> list[tuple[str, str]]:
        """MLflow runs left RUNNING by Dagster runs that ended or whose worker died (a SIGKILL never
        reaches MLflow): closed with the Dagster outcome (KILLED for a dead worker)."""
        from unime_assets.defs.slots import worker_alive

        def status_for(dagster_run_id: str) -> str | None:
            if not dagster_run_id or dagster_run_id == current_run_id:
                return None
            run = instance.get_run_by_id(dagster_run_id)
            if run is None or run.is_finished:
                return MLFLOW_STATUS.get(run.status, "KILLED") if run is not None else None
            return "KILLED" if worker_alive(instance, dagster_run_id) is False else None

        return tracking.close_runs(self.uri(), self.experiment_name, status_for)

    def parent_run(self, key: str, name: str, tags: dict[str, str] | None = None) -> str:
        """The id of the MLflow run tagged `unime.parent_key = key`, created (empty, FINISHED) when there
        is none: the parent that a job's runs nest under (the ablation's partitions).

        A file lock makes the workers of one machine find the same one. It holds on one machine only:
        runs on two machines (a cluster run launcher) can each create one within moments. Every call
        therefore keeps the oldest live parent of the key (client start time, then id) and merges the
        others into it: their child runs are re-tagged to nest under it, then they are deleted. Parents
        created on two machines within one round trip (or on clocks set apart) can both exist for a
        while, and a run can nest under the one merged away; the next call of the campaign (a later
        run's start, `ablation_report` at the end) moves them under the survivor."""
        import fcntl

        from mlflow import MlflowClient
        from mlflow.entities import ViewType

        uri = self.uri()
        exp_id = tracking.ensure_experiment(uri, self.experiment_name, self.artifact_location())
        lock = unime_home() / "mlflow" / "parent-runs.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)

        def parents() -> list:  # every parent of the key, deleted ones too, oldest first (ties: by run id)
            return client.search_runs([exp_id], filter_string=f"tags.`unime.parent_key` = '{key}'",
                                      run_view_type=ViewType.ALL, order_by=["attributes.start_time ASC"],
                                      max_results=1000)  # fmt: skip

        def live(runs: list) -> list:
            return [r for r in runs if r.info.lifecycle_stage == "active"]

        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            found = parents()
            if not live(found):
                run = client.create_run(exp_id, run_name=name, tags={"unime.parent_key": key, **(tags or {})})
                client.set_terminated(run.info.run_id, "FINISHED")
                found = parents()  # after our own create: another machine's older parent wins over ours
            keep = live(found)[0].info.run_id
            _merge_parents(client, exp_id, [r for r in found if r.info.run_id != keep], keep)
            return keep

    @contextlib.contextmanager
    def run(self, context: dg.AssetExecutionContext, parent_run_id: str | None = None) -> Iterator[tracking.RunHandle]:
        from unime_assets.defs.descriptions import EXPERIMENT_DESCRIPTION, EXPERIMENT_TAGS, run_description

        asset_key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else None
        run_url = f"{self.dagster_url()}/runs/{context.run_id}"
        tags = {**tracking.dagster_tags(context.run_id, asset_key, partition), "dagster.run_url": run_url,
                "dagster.job": context.job_name}  # fmt: skip
        if parent_run_id:  # shown nested under its parent in the MLflow UI
            tags["mlflow.parentRunId"] = parent_run_id
        name = f"{asset_key}" + (f"[{partition}]" if partition else "")
        for mlflow_run, status in self.close_stale_runs(context.instance, context.run_id):
            context.log.warning(f"MLflow run {mlflow_run} of an ended or dead Dagster run closed as {status}")
        note = run_description(asset_key, partition, context.job_name, run_url, self.dagster_url())
        with tracking.start_run(self.uri(), self.experiment_name, name, tags, artifact_root=self.artifact_location(),
                                ui_url=self.mlflow_url(), description=note,
                                experiment_description=EXPERIMENT_DESCRIPTION,
                                experiment_tags=EXPERIMENT_TAGS) as run:  # fmt: skip
            context.log.info(f"MLflow run {run.run_id}: {run.url}")
            yield run


def _merge_parents(client, exp_id: str, others: list, keep: str) -> None:
    """Every run of `others` (the key's other parents, deleted ones too: a run may have nested under one
    after it was merged) hands its live children to `keep` and is deleted."""
    from mlflow.exceptions import MlflowException

    for other in others:
        children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{other.info.run_id}'",
                                      max_results=10_000)  # fmt: skip
        for child in children:
            try:
                client.set_tag(child.info.run_id, "mlflow.parentRunId", keep)
            except MlflowException:
                if client.get_run(child.info.run_id).info.lifecycle_stage == "active":
                    raise  # deleted since the search: nothing to move; anything else is an error
        if other.info.lifecycle_stage == "active":
            client.delete_run(other.info.run_id)


@dg.failure_hook(required_resource_keys={"mlflow"})
def mlflow_run_follows_step(context: dg.HookContext) -> None:
    """A step that fails after its MLflow run ended (the IO manager's write, a check) marks that run
    FAILED, so MLflow never shows FINISHED for a materialization Dagster reports as failed."""
    mlflow: MlflowResource = context.resources.mlflow
    asset = context.op.name

    def status_for(dagster_run_id: str) -> str | None:
        return "FAILED" if dagster_run_id == context.run_id else None

    query = f"tags.`dagster.run_id` = '{context.run_id}' and tags.`dagster.asset_key` = '{asset}'"
    tracking.close_runs(mlflow.uri(), mlflow.experiment_name, status_for, query=query)
