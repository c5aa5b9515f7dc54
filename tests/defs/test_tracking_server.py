"""The MLflow resource against a tracking server (production: `deploy/mlflow-server.sh`, `--serve-artifacts`)
and across machines: artifacts go where the server keeps them, one parent run per campaign."""

from __future__ import annotations

import time

import pytest
from conftest import free_port  # tests/ is on sys.path
from defs_helpers import running_mlflow_server
from mlflow import MlflowClient

from unime_assets.defs.resources import MlflowResource
from unime_assets.tracking import start_run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` as the production script starts it: its own store, artifacts proxied to a folder."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port, dest = free_port(), tmp_path / "server-artifacts"
    args = ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--serve-artifacts", "--artifacts-destination", str(dest)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running_mlflow_server(args, url, tmp_path / "server.log", cwd=tmp_path):
        yield url, dest


def test_runs_on_a_tracking_server_keep_their_artifacts_where_the_server_does(server, tmp_path, monkeypatch):
    """Before: the first run created the experiment with this machine's $UNIME_HOME folder as its artifact
    location, so every run's plots went to the local disk of whichever machine ran it, out of the
    server's (and its UI's) reach."""
    url, dest = server
    monkeypatch.setenv("UNIME_HOME", str(tmp_path / "client-home"))
    resource = MlflowResource(tracking_uri=url)
    assert resource.artifact_location() is None
    with start_run(url, resource.experiment_name, "mmeb_train[SynColor]", {"dagster.run_id": "r"},
                   artifact_root=resource.artifact_location()) as run:  # fmt: skip
        run.log_text("hello", "notes/hello.txt")
    exp = MlflowClient(tracking_uri=url).get_experiment_by_name(resource.experiment_name)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    assert [p.read_text() for p in dest.rglob("hello.txt")] == ["hello"]
    parent = resource.parent_run("ablation-server", "ablation (server)")  # the ablation's path to the server
    assert resource.parent_run("ablation-server", "ablation (server)") == parent
    assert MlflowClient(tracking_uri=url).get_run(parent).info.artifact_uri.startswith("mlflow-artifacts:")
    assert not (tmp_path / "client-home" / "mlflow" / "artifacts").exists()


def test_an_experiment_left_with_a_client_folder_on_the_server_is_named_in_a_warning(server, tmp_path, caplog):
    from unime_assets.tracking import ensure_experiment

    url, _ = server
    MlflowClient(tracking_uri=url).create_experiment("legacy", artifact_location=(tmp_path / "a").as_uri())
    with caplog.at_level("WARNING", logger="unime_assets.tracking.mlflow_runs"):
        ensure_experiment(url, "legacy")
    assert "keeps its artifacts in file://" in caplog.text and "legacy" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="unime_assets.tracking.mlflow_runs"):
        ensure_experiment(url, "fresh")
    assert caplog.text == ""


def test_databricks_is_a_server():
    from unime_assets.tracking import is_server_uri

    assert is_server_uri("databricks") and is_server_uri("https://mlflow.example") and is_server_uri("http://h:5000")
    assert not is_server_uri("sqlite:///m.db") and not is_server_uri("postgresql+psycopg2://u@h/db")
    assert not is_server_uri("/tmp/mlruns") and not is_server_uri("file:///tmp/mlruns")


def test_an_explicit_artifact_root_is_kept(tmp_path):
    assert MlflowResource(tracking_uri="http://mlflow:5000", artifact_root="s3://bucket/mlflow").artifact_location() \
        == "s3://bucket/mlflow"  # fmt: skip
    local = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(tmp_path / "a"))
    assert local.artifact_location() == str(tmp_path / "a")


def test_a_local_store_keeps_its_artifacts_under_unime_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIME_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert MlflowResource().artifact_location() == str(tmp_path / "mlflow" / "artifacts")


def test_parent_runs_created_on_two_machines_at_once_end_as_one(tmp_path, monkeypatch):
    """The file lock serialises one machine's workers only. Another machine's worker that created its
    parent first (older) wins: ours is deleted before anything nests under it, and both return the same."""
    monkeypatch.setenv("UNIME_HOME", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resource = MlflowResource(tracking_uri=uri)
    real = MlflowClient.create_run
    theirs = {}

    def racing(self, experiment_id, start_time=None, tags=None, run_name=None):
        # The other machine's create lands between our search (nothing found) and our create.
        other = real(MlflowClient(tracking_uri=uri), experiment_id, start_time=int(time.time() * 1000) - 5,
                     tags=tags, run_name=run_name)  # fmt: skip
        theirs["id"] = other.info.run_id
        return real(self, experiment_id, start_time=start_time, tags=tags, run_name=run_name)

    monkeypatch.setattr(MlflowClient, "create_run", racing)
    got = resource.parent_run("ablation-x", "ablation (x)")
    monkeypatch.setattr(MlflowClient, "create_run", real)
    assert got == theirs["id"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(resource.experiment_name)
    live = client.search_runs([exp.experiment_id], filter_string="tags.`unime.parent_key` = 'ablation-x'")
    assert [r.info.run_id for r in live] == [got]
    assert resource.parent_run("ablation-x", "ablation (x)") == got  # found again, nothing new



def _two_parents(tmp_path, monkeypatch, key: str):
    """A local store holding two parents of `key` that both stayed (created 3 ms apart, the older first)."""
    monkeypatch.setenv("UNIME_HOME", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resource, client = MlflowResource(tracking_uri=uri), MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(resource.experiment_name)
    now = int(time.time() * 1000)
    older, newer = (client.create_run(exp_id, start_time=now + dt, tags={"unime.parent_key": key}).info.run_id
                    for dt in (0, 3))  # fmt: skip
    return resource, client, exp_id, older, newer


def test_parents_that_both_stayed_are_merged_by_the_next_call(tmp_path, monkeypatch):
    """Two machines each created a parent without seeing the other's, and runs nested under both (and one
    under the newer after it was already merged away). The next call of the campaign keeps the older:
    every child ends under it and the newer parent is deleted. Before, the campaign stayed split."""
    from mlflow.entities import ViewType

    resource, client, exp_id, older, newer = _two_parents(tmp_path, monkeypatch, "ablation-y")
    under = {p: [client.create_run(exp_id, tags={"mlflow.parentRunId": p}).info.run_id for _ in range(2)]
             for p in (older, newer)}  # fmt: skip
    other_campaign = client.create_run(exp_id, tags={"mlflow.parentRunId": "elsewhere"}).info.run_id

    assert resource.parent_run("ablation-y", "ablation (y)") == older
    assert client.get_run(newer).info.lifecycle_stage == "deleted"
    for child in under[older] + under[newer]:
        assert client.get_run(child).data.tags["mlflow.parentRunId"] == older
    assert client.get_run(other_campaign).data.tags["mlflow.parentRunId"] == "elsewhere"

    late = client.create_run(exp_id, tags={"mlflow.parentRunId": newer}).info.run_id  # started with the old id
    assert resource.parent_run("ablation-y", "ablation (y)") == older
    assert client.get_run(late).data.tags["mlflow.parentRunId"] == older
    keys = client.search_runs([exp_id], filter_string="tags.`unime.parent_key` = 'ablation-y'",
                              run_view_type=ViewType.ACTIVE_ONLY)  # fmt: skip
    assert [r.info.run_id for r in keys] == [older]


def test_a_child_deleted_while_its_parent_is_merged_is_left_alone(tmp_path, monkeypatch):
    resource, client, exp_id, older, newer = _two_parents(tmp_path, monkeypatch, "ablation-z")
    gone, kept = (client.create_run(exp_id, tags={"mlflow.parentRunId": newer}).info.run_id for _ in range(2))
    real = MlflowClient.set_tag

    def deleted_first(self, run_id, key, value, *args, **kwargs):
        if run_id == gone:  # a user deletes it between the merge's search and its re-tagging
            client.delete_run(gone)
        return real(self, run_id, key, value, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_tag", deleted_first)
    assert resource.parent_run("ablation-z", "ablation (z)") == older
    assert client.get_run(kept).data.tags["mlflow.parentRunId"] == older
    assert client.get_run(newer).info.lifecycle_stage == "deleted"
