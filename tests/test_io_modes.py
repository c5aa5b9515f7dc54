"""Outputs honour the umask (tempfile's 0600 / 0700 never leak), and servers bind to 127.0.0.1 unless
configured with authentication."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unime_assets.io import atomic_dir, atomic_path, write_parquet

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                             (0o077, 0o600, 0o700)])  # fmt: skip
def test_atomic_outputs_get_the_modes_of_plain_writes(tmp_path, mask, file_mode, dir_mode):
    import polars as pl

    old = os.umask(mask)
    try:
        write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "ckpt") as d:
            (d / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "t.parquet") == mode(tmp_path / "f.json") == file_mode
    assert mode(tmp_path / "ckpt") == dir_mode and mode(tmp_path / "ckpt" / "w.bin") == file_mode


def test_servers_bind_to_localhost_unless_authenticated():
    script = (REPO / "deploy" / "mlflow-server.sh").read_text()
    assert '--host "${MLFLOW_HOST:-127.0.0.1}"' in script and "0.0.0.0" not in script.split("exec mlflow")[1]
    assert "--app-name basic-auth" in script  # another host only with MLflow's authentication on
    ops = (REPO / "docs" / "operating.md").read_text()
    assert "-h 0.0.0.0" not in ops and "--host 0.0.0.0" not in ops
    assert "dagster-webserver -h 127.0.0.1" in ops and "basic-auth" in ops
