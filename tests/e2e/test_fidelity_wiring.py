"""The official recipe is in effect in a materialized graph (the reduced embedded default, through
the real CLI): the settings reach each asset's MLflow run and the launched trainers, the reranker's
learning rate follows the cosine schedule, and the report shows the protocol counts per subset."""

from __future__ import annotations

import json
import math

import dagster as dg
import pytest
from mlflow import MlflowClient


def _latest_run(client: MlflowClient, asset: str):
    exp = client.get_experiment_by_name("unime-v2")
    runs = client.search_runs([exp.experiment_id], f"tags.`dagster.asset_key` = '{asset}'",
                              order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    assert runs, asset
    return runs[0]


@pytest.mark.slow
def test_official_recipe_reaches_runs_trainers_and_report(materialized, settings):
    client = MlflowClient(tracking_uri=materialized["env"]["MLFLOW_TRACKING_URI"])
    assets = materialized["root"] / "assets"

    emb = _latest_run(client, "embedder_checkpoint").data.params
    assert float(emb["loss_eps"]) == 1e-8 and emb["loss"] == "judge_kl" and emb["image_size"] == "672"
    assert (emb["image_resolution"], emb["lr_schedule"], emb["max_len"]) == ("mid", "linear", "4096")

    run = _latest_run(client, "reranker_checkpoint")
    rr = run.data.params
    assert (rr["label_mask"], rr["pairwise_prompt"], rr["listwise_slot"]) == ("official", "official", "official")
    assert (rr["max_pixels"], rr["lr_schedule"], rr["warmup_ratio"], rr["weight_decay"]) == (
        "235200", "cosine", "0.03", "0.0")  # fmt: skip
    assert rr["lora.exclude_modules"] == ".*visual.*"
    spec = json.loads((assets / "launch" / "reranker_checkpoint" / "spec.json").read_text())
    assert (spec["label_mask"], spec["max_pixels"], spec["lr_schedule"]) == ("official", 235200, "cosine")
    # Step k of T = 4 with W = 1 warmup step: lr * 0.5 (1 + cos(pi (k - W) / (T - W))); linear would
    # give 2/3 and 1/3 at steps 2 and 3.
    total, warm, lr = settings.reranker.steps, 1, settings.reranker.lr
    assert (spec["steps"], spec["warmup_steps"]) == (total, warm) and total == 4
    want = [0.0] + [lr * 0.5 * (1 + math.cos(math.pi * (k - warm) / (total - warm))) for k in range(1, total)]
    got = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert got == pytest.approx(want)

    report = _latest_run(client, "mmeb_report")
    params, metrics = report.data.params, report.data.metrics
    assert (params["rerank_unparsable"], params["rerank_hit"], params["rerank_max_new_tokens"]) == (
        "miss", "content", "128")  # fmt: skip
    per_subset = {n: metrics[f"rerank_unparsable.{n}"] for n in materialized["eval"]}
    assert sum(per_subset.values()) == metrics["rerank_unparsable"]
    for n in materialized["eval"]:
        assert metrics[f"embedder.tied_top.{n}"] >= metrics[f"embedder.gt_tied.{n}"] >= 0
    with dg.DagsterInstance.from_config(str(materialized["root"] / "dg")) as instance:
        meta = instance.get_latest_materialization_event(dg.AssetKey("mmeb_report")).asset_materialization.metadata
    table = meta["protocol"].value
    assert "reranker: unparsable" in table and "embedder: tied (GT)" in table
    for n in materialized["eval"]:
        assert any(line.startswith(f"| {n} |") for line in table.splitlines())
