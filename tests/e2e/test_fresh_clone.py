"""A fresh clone, as a new user gets it: the tracked files, the project's environment installed (`.venv`,
here a link to this one) and `make init` (what `make install` ends with), then the README's commands run
from the project root in a shell where DAGSTER_HOME, UNIME_HOME, MLFLOW_TRACKING_URI and UNIME_SETTINGS
are not exported. Outside the project root, the CLI says in one line what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
UNSET = ("DAGSTER_HOME", "UNIME_HOME", "MLFLOW_TRACKING_URI", "UNIME_SETTINGS", "DAGSTER_UI_URL", "MLFLOW_UI_URL")
# Both appear verbatim in the README (checked below), so the README's examples are what runs here.
DAGSTER_CMD = ".venv/bin/dagster asset materialize -m unime_assets.definitions --select mmeb_train --partition SynShape"
CLI_CMD = ".venv/bin/unime-assets materialize --train SynColor --eval SynColor --assets mmeb_train,mmeb_eval"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in UNSET}


def _sh(cmd: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True)  # fmt: skip
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()}): no file list to clone from")
    root = tmp_path_factory.mktemp("clone")
    for rel in listed.stdout.splitlines():
        src = ROOT / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    (root / ".venv").symlink_to(Path(sys.prefix))  # `make install` would build the same environment here
    init = _sh("make -s init", root)
    assert init.returncode == 0, init.stdout + init.stderr
    built = _sh(".venv/bin/unime-assets build-default --size test", root)
    assert built.returncode == 0, built.stdout + built.stderr[-3000:]
    return root


@pytest.mark.slow
def test_readme_commands_run_from_the_project_root_without_exported_variables(clone, monkeypatch):
    assert DAGSTER_CMD in README and CLI_CMD in README
    assert (clone / ".env").is_file() and (clone / ".dagster_home" / "dagster.yaml").resolve() == clone / "dagster.yaml"

    dagster = _sh(DAGSTER_CMD, clone)
    assert dagster.returncode == 0, dagster.stdout[-3000:] + dagster.stderr[-6000:]
    cli = _sh(CLI_CMD, clone)
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-6000:]
    assert "stage 1/2 ingest_train" in cli.stdout and "stage 2/2 ingest_eval" in cli.stdout, cli.stdout
    assert " - DEBUG - " not in cli.stdout + cli.stderr  # Dagster's per-event lines stay in the event log

    # both wrote into the clone's own instance and MLflow store, found through its .env
    monkeypatch.setenv("DAGSTER_HOME", str(clone / ".dagster_home"))  # its dagster.yaml reads it (storage)
    with dg.DagsterInstance.from_config(str(clone / ".dagster_home")) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("mmeb_train")) == {"SynShape", "SynColor"}
        assert instance.get_materialized_partitions(dg.AssetKey("mmeb_eval")) == {"SynColor"}
        jobs = {r.dagster_run.job_name for r in instance.get_run_records()}
        assert {"ingest_train", "ingest_eval"} <= jobs
    client = MlflowClient(tracking_uri=f"sqlite:///{clone / '.unime' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("unime-v2").experiment_id])
    assert {r.data.tags["dagster.partition"] for r in runs if r.data.tags["dagster.asset_key"] == "mmeb_train"} == {
        "SynShape", "SynColor"}  # fmt: skip
    assert all(r.data.tags["dagster.run_url"].endswith(r.data.tags["dagster.run_id"]) for r in runs)


@pytest.mark.slow
def test_outside_the_project_root_the_cli_says_what_is_missing_in_one_line(clone, tmp_path):
    proc = _sh(f"{clone}/.venv/bin/unime-assets materialize --assets mmeb_train", tmp_path, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unime-assets: DAGSTER_HOME is not set"), proc.stderr
    assert "make install" in lines[0]
