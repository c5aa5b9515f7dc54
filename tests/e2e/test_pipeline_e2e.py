"""The whole graph on the reduced embedded default, through the real CLI, in a temporary Dagster
instance and MLflow store: two train partitions and three eval partitions backfilled, and the
unpartitioned rest of the graph consuming exactly those."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import dagster as dg
import pandas as pd
import polars as pl
import pytest
from mlflow import MlflowClient

from unime_assets.cli import ASSETS

# The embedded test default has one judge; judge_model and judge_scores have one asset per judge.
KEYS = [f"{name}/qwen25vl" if name in ("judge_model", "judge_scores") else name for name in ASSETS]


@pytest.mark.slow
def test_cli_backfill_of_some_partitions_feeds_the_whole_graph(materialized, settings):
    env, tmp_path = materialized["env"], materialized["root"]
    TRAIN, EVAL = materialized["train"], materialized["eval"]
    uri = env["MLFLOW_TRACKING_URI"]
    cli = [sys.executable, "-m", "unime_assets.cli"]
    summary = subprocess.run([*cli, "summary"], env=env, capture_output=True, text=True, timeout=300)
    assert summary.returncode == 0, summary.stdout + summary.stderr
    out = summary.stdout
    # per-stage timing by job, judge and mining quality over both partitions, the MMEB table in report order,
    # the registered versions with their aliases
    for job in ("ingest_train", "ingest_eval", "models", "index", "mine", "train", "evaluate"):
        assert f"\n  {job} " in out, (job, out)
    assert "all 2 partitions" in out and "worst partition: " in out
    mmeb = out[out.index("MMEB-format Precision@1"):]
    assert mmeb.index("retriever") < mmeb.index("embedder (untrained base)") < mmeb.index("embedder + reranker")
    assert "classification" in mmeb and "overall" in mmeb
    registry = out[out.index("registered model"):]
    for name in ("unime-v2-embedder", "unime-v2-reranker"):
        assert f"\n  {name}  " in registry and "candidate" in registry, out
    # `materialize --summary` (make demo) printed the same MMEB table after its last stage (what follows it, the
    # MLflow run count and the registry, other tests may have added to since)
    table = mmeb[: mmeb.index("\nMLflow (")]
    assert table in materialized["log"][materialized["log"].index("materialized in"):], materialized["log"][-3000:]

    with dg.DagsterInstance.from_config(str(tmp_path / "dg")) as instance:
        for name in KEYS:
            event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(name))
            assert event is not None, name
            assert "mlflow_run_id" in event.asset_materialization.metadata, name
        assert instance.get_materialized_partitions(dg.AssetKey("mined_negatives")) == set(TRAIN)
        assert instance.get_materialized_partitions(dg.AssetKey("mmeb_eval")) == set(EVAL)
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("candidate_pool"), "delta_rule_holds")]
        )
        assert checks, "asset checks ran with the partitions"
        ts_run = instance.get_latest_materialization_event(dg.AssetKey("training_set")).run_id
        # the generator's ground truth reaches the δ rule and every mining rule's audit
        latest = instance.get_latest_materialization_event
        pool_meta = latest(dg.AssetKey("candidate_pool")).asset_materialization.metadata
        assert {"false_negatives_per_query", "delta_removed_per_query", "pool_false_negative_share"} <= set(pool_meta)
        mined_meta = latest(dg.AssetKey("mined_negatives")).asset_materialization.metadata
        audit = mined_meta["false_negatives_by_rule"].value  # a native table, one record per rule
        assert {r.data["rule"] for r in audit.records} >= {"unime_v2", "topk_perc_pos", "random", "top"}
        assert 0 <= mined_meta["truth.negatives_false_negative_share"].value <= 1

    # every materialization has its MLflow run, tagged with where it came from (partitions included)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("unime-v2")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_asset: dict[str, set[str]] = {}
    for r in runs:
        assert r.info.status == "FINISHED" and {"dagster.run_id", "dagster.partition"} <= set(r.data.tags)
        by_asset.setdefault(r.data.tags["dagster.asset_key"], set()).add(r.data.tags["dagster.partition"])
    assert set(by_asset) == set(KEYS)
    assert by_asset["judge_scores/qwen25vl"] == set(TRAIN) == by_asset["judge_ensemble"]
    assert by_asset["mmeb_eval"] == set(EVAL)

    # registry versions with the `candidate` alias and lineage tags back to the training set's run
    for name in ("unime-v2-embedder", "unime-v2-reranker"):
        mv = client.get_model_version_by_alias(name, "candidate")
        assert mv.tags["upstream.training_set.run_id"] == ts_run

    # data contracts between the stages, per partition
    tables = materialized["tables"]
    for p in TRAIN:
        train, pool = pl.read_parquet(tables / "mmeb_train" / f"{p}.parquet"), pl.read_parquet(
            tables / "candidate_pool" / f"{p}.parquet"
        )
        judge = pl.read_parquet(tables / "judge_scores" / "qwen25vl" / f"{p}.parquet")
        mined = pl.read_parquet(tables / "mined_negatives" / f"{p}.parquet")
        # one judge: its ensemble is itself, and mining read the (default) first judge
        assert pl.read_parquet(tables / "judge_ensemble" / f"{p}.parquet").equals(judge)
        assert set(mined["judge"]) == {"qwen25vl"} and mined["pos_score"].to_list() == judge["pos_score"].to_list()
        assert train["pair_id"].to_list() == pool["pair_id"].to_list() == judge["pair_id"].to_list()
        assert (judge["cand_scores"].list.len() == pool["cand_ids"].list.len()).all()
        assert (mined["neg_cand_ids"].list.len() == settings.mining.n_negatives).all()
    ts = pl.read_parquet(tables / "training_set.parquet")
    assert set(ts["subset"]) == set(TRAIN)
    report = pl.read_parquet(tables / "mmeb_report.parquet")
    assert set(report["subset"]) == set(EVAL)
    # retriever, untrained base, embedder, and embedder + reranker in both modes (rerank_mode + rerank_also)
    assert report["model"].n_unique() == 5 and report["precision_at_1"].is_between(0, 1).all()
    assert {m for m in report["model"] if m.startswith("embedder + reranker")} == {
        "embedder + reranker (top-4 listwise)", "embedder + reranker (top-4 pairwise)"}

    # the registered embedder loads through MLflow and embeds text and images
    import mlflow.pyfunc

    mlflow.set_tracking_uri(uri)  # this process, not only the CLI's, reads the e2e store
    model = mlflow.pyfunc.load_model("models:/unime-v2-embedder@candidate")
    image = ts.filter(pl.col("pos_image_path") != "")["pos_image_path"][0]
    vecs = model.predict(pd.DataFrame({"text": ["red", "<|image_1|>\nRepresent the given image.\n"],
                                       "image": ["", image]}),
                         params={"image_root": str(settings.train_image_root)})  # fmt: skip
    assert vecs.shape == (2, 128)
    assert abs(float((vecs[0] ** 2).sum()) - 1.0) < 1e-4 and abs(float(vecs[0] @ vecs[1])) < 0.9999


@pytest.mark.slow
def test_readme_numbers_regenerates_the_demo_table_from_the_instance(materialized, tmp_path):
    """scripts/readme_numbers.py writes the demo table between its markers from the latest materializations."""
    from pathlib import Path

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- readme_numbers:demo -->\nstale\n<!-- /readme_numbers:demo -->\nrest\n")
    script = Path(__file__).resolve().parents[2] / "scripts" / "readme_numbers.py"
    args = [sys.executable, str(script), "--readme", str(readme), "--only", "demo",
            "--dagster-home", str(materialized["root"] / "dg"), "--unime-home", str(materialized["root"] / "home")]
    check = subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "stale" in check.stderr  # the placeholder is not the run's table
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("intro\n<!-- readme_numbers:demo -->\n| model |") and text.endswith("rest\n")
    for row in ("| retriever |", "| embedder |", "| embedder + reranker (top-4 pairwise) |", "torch threads 1"):
        assert row in text, row
    report = pl.read_parquet(materialized["tables"] / "mmeb_report.parquet")
    embedder = report.filter(pl.col("model") == "embedder")["precision_at_1"].mean()
    row = text.split("\n| embedder |")[1].split("\n")[0]
    assert row.strip(" |").split("|")[-1].strip() == f"{100 * embedder:.1f}"  # overall: the mean over datasets
    assert subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=300).returncode == 0
    # An instance folder as `make init` writes it (the project's dagster.yaml: storage under $DAGSTER_HOME),
    # read with no DAGSTER_HOME in the environment: --dagster-home alone names it.
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(script.parents[1] / "dagster.yaml", home / "dagster.yaml")
    for sub in (materialized["root"] / "dg").iterdir():
        if sub.name != "dagster.yaml":  # (another test may have written one for the instance there)
            (home / sub.name).symlink_to(sub)
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    args[args.index("--dagster-home") + 1] = str(home)
    check = subprocess.run([*args, "--check"], env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]


@pytest.mark.slow
def test_the_models_stage_trains_its_independent_chains_side_by_side(materialized):
    """`materialize` runs the models stage with Dagster's multiprocess executor, as a UI launch does: the
    judge bootstrap and pretrained_base -> retriever_model run in separate processes, at the same time."""
    with dg.DagsterInstance.from_config(str(materialized["root"] / "dg")) as instance:
        run_id = instance.get_latest_materialization_event(dg.AssetKey("pretrained_base")).run_id
        assert instance.get_latest_materialization_event(dg.AssetKey(["judge_model", "qwen25vl"])).run_id == run_id
        records = instance.get_records_for_run(run_id).records
        starts, ends, pids = {}, {}, {}
        for r in records:
            ev = r.event_log_entry.dagster_event
            if ev is None or ev.step_key is None:
                continue
            if ev.event_type == dg.DagsterEventType.STEP_START:
                starts[ev.step_key], pids[ev.step_key] = r.event_log_entry.timestamp, ev.pid
            elif ev.event_type == dg.DagsterEventType.STEP_SUCCESS:
                ends[ev.step_key] = r.event_log_entry.timestamp
    judge = next(k for k in starts if k.startswith("judge_model"))
    assert {"pretrained_base", "retriever_model"} <= set(starts) and set(ends) == set(starts)
    assert len({pids[judge], pids["pretrained_base"]}) == 2  # one process per step
    # the judge's training overlaps the pretrained base's (the in-process executor ran them in turn)
    assert starts[judge] < ends["pretrained_base"] and starts["pretrained_base"] < ends[judge]
