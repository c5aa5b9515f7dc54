"""Every notebook in notebooks/ executes top to bottom (nbclient, a fresh python3 kernel) against the
session's materialized instance and MLflow store, so the notebooks cannot go stale. The executed copies
are kept as CI artifacts ($UNIME_ARTIFACTS_DIR/notebooks/, default ci-artifacts/notebooks/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = Path(os.environ.get("UNIME_ARTIFACTS_DIR", ROOT / "ci-artifacts"))
ENV_KEYS = ("DAGSTER_HOME", "UNIME_HOME", "UNIME_SETTINGS", "MLFLOW_TRACKING_URI")


def test_notebooks_are_committed_without_outputs():
    import nbformat

    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_against_the_materialized_instance(path, materialized, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for key in ENV_KEYS:  # the kernel inherits this process's environment
        monkeypatch.setenv(key, materialized["env"][key])
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as outputs
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        client.execute()
    finally:
        out = ARTIFACTS / "notebooks" / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    images = sum(
        "image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert images >= 1, f"{path.name} drew no figure"
