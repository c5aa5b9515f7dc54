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
    """One MLflow run per materialization, tagged dagster.run_id / dagster.asset_key / dagster.partition."""

    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI or sqlite under $UNIME_HOME/mlflow
    experiment_name: str = "unime-v2"
    artifact_root: str = ""
    ui_url: str = "http://127.0.0.1:5000"

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
        asset_key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else None
        tags = tracking.dagster_tags(context.run_id, asset_key, partition)
        name = f"{asset_key}" + (f"[{partition}]" if partition else "")
        with tracking.start_run(self.uri(), self.experiment_name, name, tags, artifact_root=self.artifacts(),
                                ui_url=self.ui_url) as run:  # fmt: skip
            context.log.info(f"MLflow run {run.run_id}: {run.url}")
            yield run
