"""Helpers shared by the asset-level tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def nudge_weights(ckpt: Path, amount: float = 1e-3) -> None:
    """A "trained" copy of a checkpoint: one projection weight moved by `amount` (deterministic, so two
    nudged copies of one checkpoint hold the same weights)."""
    from safetensors.torch import load_file, save_file

    f = next(Path(ckpt).glob("*.safetensors"))
    tensors = load_file(f)
    name = sorted(k for k in tensors if "proj" in k)[0]
    tensors[name] = tensors[name] + amount
    save_file(tensors, f, metadata={"format": "pt"})


def stop_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the server's process group (started in its own session, so children get it too)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_mlflow_server(args: list[str], url: str, log: Path, *, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Iterator[subprocess.Popen]:  # fmt: skip
    """`mlflow server <args>` in its own session, yielded once `<url>/health` answers (the test fails with
    the server's log if it exits or is not up within 180 s); SIGTERM to its process group afterwards."""
    exe = Path(sys.executable).with_name("mlflow")
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "server", *args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up within 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        stop_group(proc, signal.SIGTERM)
