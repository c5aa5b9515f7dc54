"""Same code, settings and seed give the same numbers: the reduced graph built and materialized a second
time in a fresh home (new data, tokenizer and tiny checkpoints, new Dagster instance, MLflow store and
artifacts), through the CLI, gives exactly the numbers of the session's `materialized` run: every
numeric materialization metadata value, every MLflow metric, every stored table, every trained weight.

Only the wall-clock measurements differ (seconds, rates), and paths (another home): both are left out of
the comparison by name. One torch thread per process (Settings.torch_threads, the default) is what makes
this hold: the thread count changes CPU reduction order, hence the last digits. The second run mines its
subsets one after the other in one process, the first side by side in two (the CLI's default), so the
comparison also pins that the process a partition runs in does not change a number.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from mlflow import MlflowClient

# Wall-clock measurements: the only numbers that may differ between two runs of the same thing.
TIMING = re.compile(r"seconds|elapsed|per_s(ec)?\b|throughput", re.I)


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        out[prefix] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)


def metadata_numbers(dagster_home: Path) -> dict[str, float]:
    """asset[partition].key -> value of every numeric (or JSON-numeric) metadata entry of the latest
    materialization of every asset partition."""
    out: dict[str, float] = {}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for key in instance.get_asset_keys():
            latest: dict[str | None, dg.EventLogRecord] = {}
            for rec in instance.fetch_materializations(key, limit=10_000).records:
                part = rec.asset_materialization.partition
                if part not in latest or rec.storage_id > latest[part].storage_id:
                    latest[part] = rec
            for part, rec in latest.items():
                for name, mv in rec.asset_materialization.metadata.items():
                    if not TIMING.search(name):
                        _flatten(f"{key.to_user_string()}[{part}].{name}", mv.value, out)
    return out


def mlflow_metrics(uri: str) -> dict[str, float]:
    """(asset, partition).metric -> latest value, every run of the experiment (one per materialization)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("unime-v2")
    out: dict[str, float] = {}
    for run in client.search_runs([exp.experiment_id], max_results=10_000):
        tag = f"{run.data.tags.get('dagster.asset_key')}[{run.data.tags.get('dagster.partition')}]"
        for name, value in run.data.metrics.items():
            if not TIMING.search(name):
                assert f"{tag}.{name}" not in out, f"two MLflow runs for {tag}"
                out[f"{tag}.{name}"] = value
    return out


def tables(root: Path, home: Path) -> dict[str, pl.DataFrame]:
    """Every stored table, with this home's absolute paths (file provenance) written as <home>."""
    out = {}
    for f in sorted(root.rglob("*.parquet")):
        df = pl.read_parquet(f)
        out[str(f.relative_to(root))] = df.with_columns(pl.col(pl.String).str.replace_all(str(home), "<home>",
                                                                                         literal=True))  # fmt: skip
    return out


def weights(artifacts: Path) -> dict[str, str]:
    """sha256 of every trained safetensors file under the artifacts root (DeepSpeed resume states aside)."""
    return {str(f.relative_to(artifacts)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(artifacts.rglob("*.safetensors")) if "checkpoints" not in f.parts}  # fmt: skip


@pytest.fixture(scope="module")
def second_run(materialized, tmp_path_factory) -> dict:
    """The session's reduced graph again, from scratch in another home: same partitions, same commands."""
    from unime_assets.embedded import build_embedded_default

    root = tmp_path_factory.mktemp("again")
    settings = build_embedded_default(root / "embedded", "test")  # new data, tokenizer, checkpoints
    raw = yaml.safe_load(settings.read_text())
    raw["artifacts_root"] = str(root / "assets")
    (root / "settings.yaml").write_text(yaml.safe_dump(raw))
    (root / "dg").mkdir()
    env = {**os.environ, "UNIME_HOME": str(root / "home"), "UNIME_SETTINGS": str(root / "settings.yaml"),
           "DAGSTER_HOME": str(root / "dg"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}  # fmt: skip
    # One process for every partition here, where the session's run mined its two subsets side by side
    # (the CLI's default --workers 2): the numbers must not depend on which process ran a partition.
    cmd = [sys.executable, "-m", "unime_assets.cli", "materialize", "--train", ",".join(materialized["train"]),
           "--eval", ",".join(materialized["eval"]), "--workers", "1"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {"env": env, "root": root, "tables": root / "home" / "assets" / "tables", "artifacts": root / "assets",
            "log": proc.stdout}


def _same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: only in one run: {sorted(set(a) ^ set(b))[:20]}"
    differ = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert not differ, f"{what}: {len(differ)} of {len(a)} differ, e.g. {dict(list(differ.items())[:10])}"


@pytest.mark.slow
def test_same_seed_same_numbers_in_two_fresh_homes(materialized, second_run, embedded_home):
    first = {"dg": materialized["root"] / "dg", "uri": materialized["env"]["MLFLOW_TRACKING_URI"],
             "tables": materialized["tables"], "artifacts": materialized["root"] / "assets"}  # fmt: skip
    second = {"dg": second_run["root"] / "dg", "uri": second_run["env"]["MLFLOW_TRACKING_URI"],
              "tables": second_run["tables"], "artifacts": second_run["artifacts"]}  # fmt: skip

    # the two runs mined their subsets in two processes and in one (see second_run)
    assert "mine: " in materialized["log"] and "partitions in 2 processes" in materialized["log"]
    assert "mine: " in second_run["log"] and "in 2 processes" not in second_run["log"]
    meta_a, meta_b = metadata_numbers(first["dg"]), metadata_numbers(second["dg"])
    _same(meta_a, meta_b, "materialization metadata")
    # the comparison covers what matters: the report's P@1, the judge's AUC, losses, mined statistics
    for needle in ("mmeb_report[None].overall.embedder", "judge_model/qwen25vl[None].held_out_auc",
                   "embedder_checkpoint[None].final_loss", "mined_negatives[SynColor].fallback_fraction",
                   "ablation", "pretrained_base[None].final_loss"):  # fmt: skip
        if needle != "ablation":
            assert any(k.startswith(needle) for k in meta_a), needle
    _same(mlflow_metrics(first["uri"]), mlflow_metrics(second["uri"]), "MLflow metrics")

    ta = tables(first["tables"], materialized["root"])
    tb = tables(second["tables"], second_run["root"])
    assert ta.keys() == tb.keys() and "mmeb_report.parquet" in ta
    for name in ta:  # no string column holds either home's path any more: a path difference is not a diff
        assert ta[name].equals(tb[name]), name
    _same(weights(first["artifacts"]), weights(second["artifacts"]), "trained weights")
    assert any(k.startswith("embedder_checkpoint/") for k in weights(first["artifacts"]))
    # and the report's numbers are the ones a user reads
    report = json.dumps({k: v for k, v in meta_a.items() if k.startswith("mmeb_report[None].overall")})
    assert "embedder + reranker" in report
