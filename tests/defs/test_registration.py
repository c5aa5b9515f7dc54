"""Training registration that a crash at any point leaves retryable: finished weights reused, one
version with its lineage, the alias moved once; versions without lineage never evaluated; a
training that changed nothing refused; MLflow run status follows the Dagster step."""

from __future__ import annotations

import contextlib
import os
import shutil

import dagster as dg
import polars as pl
import pytest
import yaml
from mlflow import MlflowClient

from unime_assets.tracking import registry

MODEL = "unime-v2-embedder"


def _training_set(settings) -> pl.DataFrame:
    """A small training set straight from the synthetic train data: text negatives with judge scores."""
    from unime_assets.data.mmeb import load_train
    from unime_assets.training.data import TRAINING_SET_SCHEMA

    train = load_train(settings.train_root, ["SynColor", "SynCaps_t2i"])
    pos = train["pos_text"].to_list()
    rows = []
    for i, r in enumerate(train.iter_rows(named=True)):
        negs = [pos[(i + 1) % len(pos)], pos[(i + 2) % len(pos)]]
        rows.append({**{k: r[k] for k in ("pair_id", "subset", "qry", "qry_image_path", "pos_text", "pos_image_path")},
                     "pos_score": 0.9, "neg_texts": negs, "neg_image_paths": ["", ""], "neg_scores": [0.4, 0.2],
                     "strategy": "unime_v2", "fallback": False})  # fmt: skip
    return pl.DataFrame(rows, schema=TRAINING_SET_SCHEMA)


@pytest.fixture
def env(tmp_path, embedded_home, settings):
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw["artifacts_root"] = str(tmp_path / "assets")
    raw["embedder"] = {**raw["embedder"], "steps": 3, "checkpoint_every": 0}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    # The embedder starts from `pretrained_base`: the tiny base stands in for it (no pretraining here).
    shutil.copytree(raw["embedder_base"]["path"], tmp_path / "assets" / "pretrained_base")
    tables = tmp_path / "tables"
    tables.mkdir()
    _training_set(settings).write_parquet(tables / "training_set.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {"settings": SettingsResource(settings_file=str(tmp_path / "s.yaml")),
                 "mlflow": MlflowResource(tracking_uri=uri, artifact_root=str(tmp_path / "mlartifacts")),
                 "io_manager": PolarsParquetIOManager(base_dir=str(tables))}  # fmt: skip
    return tmp_path, raw, resources, MlflowClient(tracking_uri=uri, registry_uri=uri)


def _materialize(resources, instance, **env):
    from unime_assets.definitions import defs

    with _env(**env):
        return dg.materialize(defs.assets, selection=["embedder_checkpoint"], resources=resources, instance=instance,
                              raise_on_error=False)  # fmt: skip


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _versions(client) -> list:
    with contextlib.suppress(Exception):
        return client.search_model_versions(f"name='{MODEL}'")
    return []


def _alias(client) -> str | None:
    with contextlib.suppress(Exception):
        return str(client.get_model_version_by_alias(MODEL, "candidate").version)
    return None


@pytest.mark.slow
def test_a_failure_at_each_point_of_registration_is_retried_without_retraining_or_duplicates(env):
    tmp_path, raw, resources, client = env
    out = tmp_path / "assets" / "embedder_checkpoint"
    with dg.DagsterInstance.ephemeral() as instance:
        # 1. dies after logging the model: no version, the weights are finished and kept
        assert not _materialize(resources, instance, **{registry.FAIL_AT_ENV: "logged"}).success
        assert _versions(client) == [] and (out / "train_result.json").is_file()
        trained_at = (out / "train_result.json").stat().st_mtime_ns
        # 2. dies after creating the version: the version already carries its lineage, no alias yet
        assert not _materialize(resources, instance, **{registry.FAIL_AT_ENV: "registered"}).success
        (mv,) = _versions(client)
        assert registry.is_complete(mv.tags) and mv.tags[registry.FINGERPRINT_TAG] and _alias(client) is None
        # 3. dies after moving the alias: the version of step 2 is found again, not duplicated
        assert not _materialize(resources, instance, **{registry.FAIL_AT_ENV: "aliased"}).success
        assert len(_versions(client)) == 1 and _alias(client) == "1"
        # 4. completes: the same weights (never retrained), the same single version
        result = _materialize(resources, instance)
        assert result.success
    meta = result.asset_materializations_for_node("embedder_checkpoint")[0].metadata
    assert meta["reused_weights"].value is True and meta["registration_reused"].value is True
    assert meta["model_version"].value == "1" and len(_versions(client)) == 1
    assert (out / "train_result.json").stat().st_mtime_ns == trained_at  # trained once, in step 1
    # every attempt's MLflow run ended with its step's outcome
    exp = client.get_experiment_by_name("unime-v2")
    statuses = [r.info.status for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])]
    assert statuses == ["FAILED", "FAILED", "FAILED", "FINISHED"]
    # models-from-code: the registered version holds no pickle, and loads and embeds
    import mlflow.artifacts
    import mlflow.pyfunc

    files = mlflow.artifacts.download_artifacts(client.get_model_version_download_uri(MODEL, "1"),
                                                dst_path=str(tmp_path / "dl"), tracking_uri=client.tracking_uri)  # fmt: skip
    names = {p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()}
    assert not any(n.endswith((".pkl", ".pickle", ".cloudpickle")) for n in names), names
    assert "pyfunc_model.py" in names and files
    mlflow.set_tracking_uri(client.tracking_uri)
    import pandas as pd

    vec = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(pd.DataFrame({"text": ["red\n"], "image": [""]}))
    assert vec.shape[0] == 1 and abs(float((vec[0] ** 2).sum()) - 1) < 1e-4


@pytest.mark.slow
def test_a_training_that_changes_nothing_is_refused(env):
    """One optimizer step is at learning rate 0 (the warmup starts there), so the "trained" weights are
    the base's: the asset fails instead of registering a model that evaluates exactly like the base."""
    tmp_path, raw, resources, client = env
    raw["embedder"]["steps"] = 1
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(resources, instance)
    assert not result.success and _versions(client) == []
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "identical to the base" in str(failure.step_failure_data.error)


def test_versions_without_lineage_are_never_evaluated(tmp_path):
    """The orphan of a registration killed between version and tags (older code), or made by hand."""
    from unime_assets.definitions import defs
    from unime_assets.defs import automation as auto
    from unime_assets.defs.resources import MlflowResource

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, source="file:///nowhere", tags={"dagster.run_id": "r1"})  # 1: complete
    client.create_model_version(MODEL, source="file:///nowhere")  # 2: no lineage
    resources = {"mlflow": MlflowResource(tracking_uri=uri)}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, cursor="1", resources=resources, definitions=defs) as ctx:
            result = auto.evaluate_new_embedder(ctx)
        assert result.run_requests == [] and result.cursor == "2"  # moved past it, nothing launched
        client.create_model_version(MODEL, source="file:///nowhere", tags={"dagster.run_id": "r3"})  # 3
        with dg.build_sensor_context(instance=instance, cursor="2", resources=resources, definitions=defs) as ctx:
            assert [r.tags[auto.VERSION_TAG] for r in auto.evaluate_new_embedder(ctx).run_requests] == ["3"]


def test_mlflow_run_follows_a_step_that_fails_after_it(tmp_path, embedded_home):
    """The table write fails after the asset's MLflow run ended: the run is marked FAILED (before: FINISHED
    while Dagster said FAILURE)."""
    from unime_assets.definitions import defs
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw["artifacts_root"] = str(tmp_path / "assets")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    blocked = tmp_path / "tables"
    blocked.write_text("a file where the tables folder should be")  # every table write fails
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {"settings": SettingsResource(settings_file=str(tmp_path / "s.yaml")),
                 "mlflow": MlflowResource(tracking_uri=uri), "io_manager": PolarsParquetIOManager(base_dir=str(blocked))}  # fmt: skip
    assets = [a for a in defs.assets if "mmeb_train" in {k.to_user_string() for k in a.keys}]
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, partition_key="SynColor", resources=resources, raise_on_error=False,
                                instance=instance)  # fmt: skip
    assert not result.success
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("unime-v2").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["dagster.run_id"] == result.run_id


def test_mlflow_runs_of_killed_dagster_runs_are_closed(tmp_path):
    """A SIGKILL never reaches MLflow: the next materialization closes such runs as KILLED."""
    import subprocess
    import sys

    from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
    from dagster._core.test_utils import create_run_for_test

    from unime_assets.defs.resources import MlflowResource
    from unime_assets.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with dg.instance_for_test() as instance:
        killed = create_run_for_test(instance, job_name="j", status=dg.DagsterRunStatus.STARTED)
        alive = create_run_for_test(instance, job_name="j", status=dg.DagsterRunStatus.STARTED)
        for run, pid in ((killed, dead.pid), (alive, os.getpid())):
            instance.report_dagster_event(DagsterEvent(DagsterEventType.ENGINE_EVENT.value, "j",
                                                       event_specific_data=EngineEventData.in_process(pid)),
                                          run_id=run.run_id)  # fmt: skip
        exp = ensure_experiment(uri, "unime-v2")
        client = MlflowClient(tracking_uri=uri)
        # RUNNING, as a process killed inside `mlflow.run(context)` leaves them
        ids = {r.run_id: client.create_run(exp, tags={"dagster.run_id": r.run_id}).info.run_id for r in (killed, alive)}
        closed = MlflowResource(tracking_uri=uri).close_stale_runs(instance, current_run_id="")
    assert closed == [(ids[killed.run_id], "KILLED")]
    assert client.get_run(ids[killed.run_id]).info.status == "KILLED"
    assert client.get_run(ids[alive.run_id]).info.status == "RUNNING"
