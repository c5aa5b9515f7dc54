"""The production profile's storage on a real PostgreSQL server: Dagster (deploy/dagster.prod.yaml,
without its cluster run launcher) and MLflow both on Postgres, two runs materializing at once.

Needs a server: set UNIME_TEST_POSTGRES_URL to a superuser URL (`.ci/run` starts a throwaway one
with scripts/pg_test_server.sh). Each test creates its own databases and drops them afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pytest
import yaml

URL = os.environ.get("UNIME_TEST_POSTGRES_URL", "")
ROOT = Path(__file__).parents[2]
needs_server = pytest.mark.skipif(
    not URL,
    reason="UNIME_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against "
    "(`.ci/run` starts one; locally: export UNIME_TEST_POSTGRES_URL=$(scripts/pg_test_server.sh start))",
)


# One partition of mmeb_train on the instance at $DAGSTER_HOME, as `unime-assets materialize` does it.
MATERIALIZE = """
import sys
import dagster as dg
from unime_assets.definitions import defs
assets = [a for a in defs.assets if dg.AssetKey("mmeb_train") in a.keys]
result = dg.materialize(assets, partition_key=sys.argv[1], instance=dg.DagsterInstance.get(), resources=defs.resources)
sys.exit(0 if result.success else 1)
"""


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def pg_databases():
    """Two fresh databases (Dagster, MLflow) on the server; dropped after the test."""
    import psycopg2

    names = {kind: f"unime_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("dagster", "mlflow")}
    admin = psycopg2.connect(URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        for name in names.values():
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {kind: _with_db(URL, name) for kind, name in names.items()}
    finally:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def prod_instance_yaml(tmp_path: Path) -> dict:
    """deploy/dagster.prod.yaml as a process on one machine loads it: without the cluster launcher."""
    raw = yaml.safe_load((ROOT / "deploy" / "dagster.prod.yaml").read_text())
    raw.pop("run_launcher")
    return raw


def prod_env(tmp_path: Path, dagster_url: str) -> dict[str, str]:
    parts = urlsplit(dagster_url)
    return {
        "DAGSTER_PG_HOST": parts.hostname or "127.0.0.1", "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_USER": parts.username or "postgres", "DAGSTER_PG_PASSWORD": parts.password or "unused",
        "DAGSTER_PG_DB": parts.path.lstrip("/"),
        "DAGSTER_ARTIFACTS_DIR": str(tmp_path / "dagster_storage"),
        "DAGSTER_COMPUTE_LOGS_DIR": str(tmp_path / "compute_logs"),
    }  # fmt: skip


def test_prod_profile_validates_without_a_server(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(prod_instance_yaml(tmp_path)))
    for k, v in prod_env(tmp_path, "postgresql://u:p@db.example:5433/dagster").items():
        monkeypatch.setenv(k, v)
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_db"]["port"] == {
        "env": "DAGSTER_PG_PORT"
    }  # validated schema
    assert config["run_retries"]["enabled"] and config["run_monitoring"]["enabled"]
    assert config["concurrency"]["pools"]["default_limit"] >= 1


@needs_server
@pytest.mark.slow
def test_two_concurrent_runs_with_dagster_and_mlflow_on_postgres(
    pg_databases, embedded_home, settings, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from unime_assets import tracking
    from unime_assets.defs.partitions import TRAIN_SUBSETS

    home = tmp_path / "dg"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(prod_instance_yaml(tmp_path)))
    mlflow_uri = pg_databases["mlflow"].replace("postgresql://", "postgresql+psycopg2://", 1)
    env = {**os.environ, **prod_env(tmp_path, pg_databases["dagster"]), "DAGSTER_HOME": str(home),
           "UNIME_HOME": str(tmp_path / "home"), "UNIME_SETTINGS": str(embedded_home / "settings.yaml"),
           "MLFLOW_TRACKING_URI": mlflow_uri}  # fmt: skip
    for k, v in prod_env(tmp_path, pg_databases["dagster"]).items():
        monkeypatch.setenv(k, v)  # this process opens the same instance
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    subsets = [s for s in TRAIN_SUBSETS if s in settings.train_subset_names][:2]

    # Schemas once, before any parallel work (both stores migrate on first use).
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.event_log_storage.set_concurrency_slots("gpu", 2)
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 2
    tracking.ensure_experiment(mlflow_uri, "unime-v2", str(tmp_path / "home" / "mlflow" / "artifacts"))

    procs = [subprocess.Popen([sys.executable, "-c", MATERIALIZE, s], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for s in subsets]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert {r.tags["dagster/partition"] for r in runs} == set(subsets)
        stats = [instance.get_run_stats(r.run_id) for r in runs]
        starts, ends = [s.start_time for s in stats], [s.end_time for s in stats]
        overlap = min(ends) > max(starts)  # the two runs were in flight at the same time
        assert instance.get_materialized_partitions(dg.AssetKey("mmeb_train")) == set(subsets)
        run_ids = {r.run_id for r in runs}

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("unime-v2")
    mruns = client.search_runs([exp.experiment_id])
    assert {r.data.tags["dagster.run_id"] for r in mruns} == run_ids
    assert {r.data.tags["dagster.partition"] for r in mruns} == set(subsets)
    assert all(
        r.info.status == "FINISHED" and r.data.tags["dagster.asset_key"] == "mmeb_train" for r in mruns
    )
    print(f"two runs on Postgres, overlapping in time: {overlap}")


@needs_server
def test_runs_starting_at_once_agree_on_the_experiment_and_its_tags(pg_databases):
    """Eight runs starting at the same moment, on experiments that are new or lack a tag: the later inserts
    hit a unique key (MLflow's SQL store writes a tag as read-then-insert). Before the fix this failed
    with UniqueViolation on the experiment's name and on its tags, as CI once did in the test above
    (51 of 160 tag writes on pre-created experiments). Every call must return the one experiment, tags set."""
    import threading

    from mlflow import MlflowClient

    from unime_assets.tracking import ensure_experiment

    uri = pg_databases["mlflow"].replace("postgresql://", "postgresql+psycopg2://", 1)
    tags = {"project": "unime-assets", "stage": "test"}
    ensure_experiment(uri, "schema-first")  # migrations once, as `unime-assets materialize` does
    for i in range(20):
        name = f"exp-{i}"
        if i % 2:
            ensure_experiment(uri, name)  # exists without the tags (an older release made it)
        barrier, ids, errors = threading.Barrier(8), [], []

        def start(name=name, barrier=barrier, ids=ids, errors=errors):
            barrier.wait()
            try:
                ids.append(ensure_experiment(uri, name, tags=tags))
            except Exception as e:  # noqa: BLE001 - collected and shown by the assertion
                errors.append(repr(e)[:300])

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert len(set(ids)) == 1
        assert {k: v for k, v in MlflowClient(tracking_uri=uri).get_experiment(ids[0]).tags.items() if k in tags} == tags
