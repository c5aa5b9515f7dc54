"""ensure_experiment when another process writes the same experiment at the same moment (two runs starting
at once on a shared Postgres store): the lost race ends in the state the winner wrote, not in an error."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from unime_assets.tracking import ensure_experiment

TAGS = {"project": "unime-assets"}


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_tag_the_other_process_added_first_is_not_an_error(tmp_path, monkeypatch):
    uri = _uri(tmp_path)
    exp_id = ensure_experiment(uri, "unime-v2")  # as a first run without tags left it
    real = MlflowClient.set_experiment_tag
    calls = []

    def racing(self, experiment_id, key, value):
        calls.append(key)
        if len(calls) == 1:  # the other process's insert lands first; ours hits the primary key
            real(MlflowClient(tracking_uri=uri), experiment_id, key, value)
            raise MlflowException("duplicate key value violates unique constraint \"experiment_tag_pk\"")
        return real(self, experiment_id, key, value)

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", racing)
    assert ensure_experiment(uri, "unime-v2", tags=TAGS) == exp_id
    assert calls == ["project"]  # the row the other process wrote is the wanted one: no second write
    assert MlflowClient(tracking_uri=uri).get_experiment(exp_id).tags["project"] == "unime-assets"


def test_a_different_value_left_by_the_other_process_is_overwritten(tmp_path, monkeypatch):
    uri = _uri(tmp_path)
    exp_id = ensure_experiment(uri, "unime-v2")
    real = MlflowClient.set_experiment_tag
    calls = []

    def racing(self, experiment_id, key, value):
        calls.append(key)
        if len(calls) == 1:  # an older release's process wrote its own value first
            real(MlflowClient(tracking_uri=uri), experiment_id, key, "older")
            raise MlflowException("duplicate key")
        return real(self, experiment_id, key, value)

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", racing)
    ensure_experiment(uri, "unime-v2", tags=TAGS)
    assert calls == ["project", "project"]
    assert MlflowClient(tracking_uri=uri).get_experiment(exp_id).tags["project"] == "unime-assets"


def test_a_store_that_keeps_failing_still_raises(tmp_path, monkeypatch):
    uri = _uri(tmp_path)
    ensure_experiment(uri, "unime-v2")

    def broken(self, experiment_id, key, value):
        raise MlflowException("database is locked")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", broken)
    with pytest.raises(MlflowException, match="locked"):
        ensure_experiment(uri, "unime-v2", tags=TAGS)


def test_an_experiment_the_other_process_created_first_is_used(tmp_path, monkeypatch):
    uri = _uri(tmp_path)
    real = MlflowClient.create_experiment
    created = {}

    def racing(self, name, artifact_location=None, tags=None):
        created["id"] = real(MlflowClient(tracking_uri=uri), name)  # the other process, without the tags
        raise MlflowException(f"Experiment '{name}' already exists.")

    monkeypatch.setattr(MlflowClient, "create_experiment", racing)
    assert ensure_experiment(uri, "unime-v2", tags=TAGS) == created["id"]
    assert MlflowClient(tracking_uri=uri).get_experiment(created["id"]).tags["project"] == "unime-assets"


def test_a_failed_create_with_no_experiment_after_it_raises(tmp_path, monkeypatch):
    def broken(self, name, artifact_location=None, tags=None):
        raise MlflowException("permission denied")

    monkeypatch.setattr(MlflowClient, "create_experiment", broken)
    with pytest.raises(MlflowException, match="permission"):
        ensure_experiment(_uri(tmp_path), "unime-v2", tags=TAGS)
