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
