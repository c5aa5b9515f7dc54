"""Shared fixtures: one reduced embedded default (synthetic data + tiny checkpoints) per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory) -> Path:
    from unime_assets.embedded import build_embedded_default

    home = tmp_path_factory.mktemp("embedded")
    build_embedded_default(home, "test")
    return home


@pytest.fixture(scope="session")
def settings(embedded_home):
    from unime_assets.config import load_settings

    return load_settings(embedded_home / "settings.yaml")


@pytest.fixture(scope="session")
def tiny_qwen2vl(embedded_home) -> Path:
    return embedded_home / "models" / "tiny-qwen2-vl"


@pytest.fixture(scope="session")
def tiny_qwen25vl(embedded_home) -> Path:
    return embedded_home / "models" / "tiny-qwen2.5-vl"


@pytest.fixture(scope="session")
def tiny_internvl(embedded_home, tiny_qwen25vl, tmp_path_factory) -> Path:
    """A tiny InternVL3-architecture judge on the same BPE as the tiny Qwen models (a second family)."""
    from transformers import PreTrainedTokenizerFast

    from unime_assets.models.tiny import build_tiny_checkpoint

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_qwen25vl)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("internvl") / "tiny-internvl3", tok, family="internvl",
                                 seed=2)  # fmt: skip


@pytest.fixture(scope="session")
def materialized(tmp_path_factory, embedded_home) -> dict:
    """The reduced graph materialized once per session through the real CLI, in its own Dagster
    instance, MLflow store and artifacts root: two train and three eval partitions backfilled, then
    every unpartitioned asset. Returns the environment that points a process at it, plus paths."""
    import subprocess
    import sys

    import yaml

    root = tmp_path_factory.mktemp("materialized")
    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw["artifacts_root"] = str(root / "assets")
    (root / "settings.yaml").write_text(yaml.safe_dump(raw))
    (root / "dg").mkdir()
    # The UIs the materializations link to (MLflow run descriptions -> Dagster, Dagster plots -> MLflow):
    # free ports now, where tests/defs/test_ui.py serves both later.
    env = {**os.environ, "UNIME_HOME": str(root / "home"), "UNIME_SETTINGS": str(root / "settings.yaml"),
           "DAGSTER_HOME": str(root / "dg"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "DAGSTER_UI_URL": f"http://127.0.0.1:{free_port()}", "MLFLOW_UI_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    cmd = [sys.executable, "-m", "unime_assets.cli", "materialize", "--train", ",".join(E2E_TRAIN),
           "--eval", ",".join(E2E_EVAL), "--summary"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {"env": env, "root": root, "tables": root / "home" / "assets" / "tables", "log": proc.stdout,
            "train": E2E_TRAIN, "eval": E2E_EVAL}


E2E_TRAIN, E2E_EVAL = ["SynColor", "SynCaps_t2i"], ["SynColor", "SynHue", "SynCaps_i2t"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
