"""`unime-assets ablate` on a copy of the session's reduced graph: (variant, seed) runs as Dagster runs in
worker processes, each an MLflow child run under the campaign's parent, then `ablation_report` and its
`ablation.json`; the command's last line names that file. A copy, so that the session's home stays the
demo graph the other end-to-end tests compare."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient


@pytest.fixture
def ablation_home(materialized, tmp_path) -> dict:
    """The materialized home copied (instance, MLflow store, tables, artifacts), paths rewritten."""
    old, new = str(materialized["root"]), str(tmp_path / "home")
    shutil.copytree(old, new, symlinks=True)
    settings = Path(new) / "settings.yaml"
    settings.write_text(settings.read_text().replace(old, new))
    env = {k: v.replace(old, new) for k, v in materialized["env"].items()}
    return {"env": env, "root": Path(new)}


@pytest.mark.slow
def test_ablate_runs_partitions_as_child_runs_and_reports(ablation_home):
    materialized = ablation_home
    env = materialized["env"]
    cmd = [sys.executable, "-m", "unime_assets.cli", "ablate", "--skip-upstream", "--workers", "1",
           "--variants", "infonce_inbatch,unime_v2", "--seeds", "1,2"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("ablation report: ") and last.endswith("ablation.json"), last
    data = json.loads(Path(last.removeprefix("ablation report: ")).read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"infonce_inbatch", "unime_v2"} and data["baseline"] == "infonce_inbatch"
    for r in rows.values():
        assert r["seeds"] == [1, 2] and len(r["overall"]) == 2 and 0 <= r["mean"] <= 100
    assert rows["unime_v2"]["delta_vs_baseline"]["seeds"] == [1, 2]
    assert data["missing"]  # the profile's other variants were not run: the report says so

    with dg.DagsterInstance.from_config(str(materialized["root"] / "dg")) as instance:
        parts = instance.get_materialized_partitions(dg.AssetKey("ablation_run"))
        assert {str(p) for p in parts} == {"1|infonce_inbatch", "2|infonce_inbatch", "1|unime_v2", "2|unime_v2"}
        meta = instance.get_latest_materialization_event(dg.AssetKey("ablation_report")).asset_materialization.metadata
        assert "table4" in "".join(meta) and meta["runs"].value == 4
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("unime-v2")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dagster.asset_key` = 'ablation_run'")
    assert len(runs) == 4
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1  # one parent per campaign, found by every run
    parent = client.get_run(parents.pop())
    assert parent.data.tags["unime.parent_key"].startswith("ablation-")
    assert {r.data.tags["unime.variant"] for r in runs} == {"infonce_inbatch", "unime_v2"}
    assert all("p_at_1.overall" in r.data.metrics and "loss" in r.data.metrics for r in runs)


def test_ablate_creates_the_stores_before_its_workers_start(tmp_path, monkeypatch):
    """A fresh home: the instance and the MLflow store exist before the worker processes open them (two
    workers creating one sqlite store at once failed `make ablation` on a fresh clone)."""
    from unime_assets.cli import _create_stores

    (tmp_path / "dg").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dg"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("UNIME_HOME", str(tmp_path / "home"))
    _create_stores()
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("unime-v2")
    assert any((tmp_path / "dg").iterdir())  # the instance's storage was created
