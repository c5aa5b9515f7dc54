"""The project's .env: written for the checkout, read by python-dotenv (as the Dagster CLI does) and by
bash alike, an exported variable always winning; and the one-line messages when the instance is not found."""

from __future__ import annotations

import os
import subprocess

import pytest
from dotenv import dotenv_values

from unime_assets.project_env import ENV_FILE, init_project, instance_problem, load_env_file


@pytest.fixture
def project(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return tmp_path


def test_init_writes_env_home_and_link(project):
    env = init_project(project)
    assert env == project / ENV_FILE
    assert (project / ".dagster_home" / "dagster.yaml").resolve() == project / "dagster.yaml"
    assert (project / ".unime" / "mlflow").is_dir()
    init_project(project)  # again: same result, no error
    assert (project / ".dagster_home" / "dagster.yaml").is_symlink()


def test_init_refuses_a_directory_that_is_not_the_project(tmp_path):
    with pytest.raises(SystemExit, match="not the project root"):
        init_project(tmp_path)


def test_defaults_apply_and_exported_values_win_for_dotenv_and_bash(project, monkeypatch):
    init_project(project)
    for key in ("DAGSTER_HOME", "UNIME_HOME"):
        monkeypatch.delenv(key, raising=False)
    values = dotenv_values(project / ENV_FILE)  # what the Dagster CLI loads from its working directory
    assert values["DAGSTER_HOME"] == str(project / ".dagster_home")
    assert values["UNIME_HOME"] == str(project / ".unime")
    monkeypatch.setenv("DAGSTER_HOME", "/elsewhere/dg")
    assert dotenv_values(project / ENV_FILE)["DAGSTER_HOME"] == "/elsewhere/dg"
    out = subprocess.run(["bash", "-c", f"set -a; . {project / ENV_FILE}; echo $DAGSTER_HOME $UNIME_HOME"],
                         env={"PATH": os.environ["PATH"], "DAGSTER_HOME": "/x"}, capture_output=True, text=True)  # fmt: skip
    assert out.stdout.split() == ["/x", str(project / ".unime")]


def test_load_env_file_fills_only_what_is_missing(project, monkeypatch):
    init_project(project)
    monkeypatch.delenv("UNIME_HOME", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", "/exported")
    assert load_env_file(project) == project / ENV_FILE
    assert os.environ["DAGSTER_HOME"] == "/exported" and os.environ["UNIME_HOME"] == str(project / ".unime")
    assert load_env_file(project / ".unime") is None  # no .env there


def test_instance_problem_is_one_line_naming_what_to_do(project, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(project)
    msg = instance_problem()
    assert msg and "\n" not in msg and "make install" in msg and str(project) in msg
    monkeypatch.setenv("DAGSTER_HOME", "relative/dir")
    assert "absolute" in instance_problem()
    monkeypatch.setenv("DAGSTER_HOME", str(project / "missing"))
    assert "does not exist" in instance_problem()
    monkeypatch.setenv("DAGSTER_HOME", str(project))
    assert instance_problem() is None


def test_init_records_a_settings_profile_and_keeps_it_when_run_again(project, monkeypatch):
    profile = project / "real.yaml"
    profile.write_text("profile: real\n")
    init_project(project, profile)
    init_project(project)  # `make install` again: the profile stays selected
    monkeypatch.delenv("UNIME_SETTINGS", raising=False)
    assert dotenv_values(project / ENV_FILE)["UNIME_SETTINGS"] == str(profile)
    with pytest.raises(SystemExit, match="does not exist"):
        init_project(project, project / "missing.yaml")
