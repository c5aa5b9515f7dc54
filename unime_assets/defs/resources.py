"""Resources: the typed settings profile and an MLflow tracker tagged with the Dagster origin."""

import contextlib
import os
from collections.abc import Iterator

import dagster as dg
import yaml

from unime_assets import tracking
from unime_assets.config import Settings, default_settings_file, load_settings, unime_home


class SettingsResource(dg.ConfigurableResource):
    """Where the settings YAML is (empty: $UNIME_SETTINGS or the embedded default) plus overrides."""

    settings_file: str = ""
    overrides_yaml: str = ""  # e.g. "embedder: {steps: 10}" from the Launchpad

    def get(self) -> Settings:
        overrides = yaml.safe_load(self.overrides_yaml) if self.overrides_yaml.strip() else None
        return load_settings(self.settings_file or default_settings_file(), overrides)


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

    @contextlib.contextmanager
    def run(self, context: dg.AssetExecutionContext) -> Iterator[tracking.RunHandle]:
        from unime_assets.defs.descriptions import EXPERIMENT_DESCRIPTION, EXPERIMENT_TAGS, run_description

        asset_key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else None
        run_url = f"{self.dagster_url()}/runs/{context.run_id}"
        tags = {**tracking.dagster_tags(context.run_id, asset_key, partition), "dagster.run_url": run_url,
                "dagster.job": context.job_name}  # fmt: skip
        name = f"{asset_key}" + (f"[{partition}]" if partition else "")
        note = run_description(asset_key, partition, context.job_name, run_url, self.dagster_url())
        with tracking.start_run(self.uri(), self.experiment_name, name, tags, artifact_root=self.artifacts(),
                                ui_url=self.mlflow_url(), description=note,
                                experiment_description=EXPERIMENT_DESCRIPTION,
                                experiment_tags=EXPERIMENT_TAGS) as run:  # fmt: skip
            context.log.info(f"MLflow run {run.run_id}: {run.url}")
            yield run
