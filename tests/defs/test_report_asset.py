"""`mmeb_report` materialized on its own (tiny checkpoints copied in place of the trained ones): the
report rows, the cache across materializations, and the champion promotion against the registry."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml
from defs_helpers import nudge_weights
from mlflow import MlflowClient

EVAL = ["SynColor", "SynHue"]
LINEAGE = {"dagster.run_id": "training-run"}  # a version registered by the training asset carries it


@pytest.fixture(scope="module")
def report_env(tmp_path_factory, embedded_home, tiny_qwen2vl, tiny_qwen25vl):
    root = tmp_path_factory.mktemp("report")
    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw["artifacts_root"] = str(root / "assets")
    raw["eval_subsets"] = EVAL  # the configured eval set: evaluating both is a complete evaluation
    (root / "settings.yaml").write_text(yaml.safe_dump(raw))
    for name, src in (("pretrained_base", tiny_qwen2vl), ("retriever_model", tiny_qwen2vl),
                      ("embedder_checkpoint", tiny_qwen2vl), ("reranker_checkpoint", tiny_qwen25vl)):  # fmt: skip
        shutil.copytree(src, root / "assets" / name)
    # A registered model version's files, laid out as the pyfunc model's artifacts.
    shutil.copytree(tiny_qwen2vl, root / "registered" / "artifacts" / "checkpoint")
    # "Trained": the same small change in both copies (an untrained copy of the base is never promoted)
    for ckpt in (root / "assets" / "embedder_checkpoint", root / "registered" / "artifacts" / "checkpoint"):
        nudge_weights(ckpt)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("unime-v2-embedder")
    client.create_model_version("unime-v2-embedder", source=str(root / "registered"), tags=LINEAGE)
    client.set_registered_model_alias("unime-v2-embedder", "candidate", "1")
    return root, uri, client


def _materialize_report(root, uri, instance, tags=None):
    from unime_assets.defs.assets.data import mmeb_eval
    from unime_assets.defs.assets.evaluation import mmeb_report
    from unime_assets.defs.checks import mmeb_report_well_formed
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    resources = {"settings": SettingsResource(settings_file=str(root / "settings.yaml")),
                 "mlflow": MlflowResource(tracking_uri=uri, artifact_root=str(root / "mlartifacts")),
                 "io_manager": PolarsParquetIOManager(base_dir=str(root / "tables"))}  # fmt: skip
    assets = [mmeb_eval, mmeb_report, mmeb_report_well_formed]
    if not (root / "tables" / "mmeb_eval").is_dir():
        for key in EVAL:
            assert dg.materialize(assets, selection=["mmeb_eval"], partition_key=key, resources=resources,
                                  instance=instance).success  # fmt: skip
    result = dg.materialize(
        assets, selection=["mmeb_report"], resources=resources, instance=instance, tags=tags
    )
    assert result.success
    meta = result.asset_materializations_for_node("mmeb_report")[0].metadata
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    return meta, checks


def test_report_cache_and_promotion(report_env):
    import polars as pl

    root, uri, client = report_env
    with dg.DagsterInstance.ephemeral() as instance:
        meta, checks = _materialize_report(root, uri, instance)
        table = pl.read_parquet(root / "tables" / "mmeb_report.parquet")
        assert table.columns == ["subset", "meta_task", "split", "model", "precision_at_1"]
        # retriever, untrained base, embedder, and both reranking modes (the test profile's rerank_also)
        assert set(table["subset"]) == set(EVAL) and table.height == 5 * len(EVAL)
        assert {"embedder", "embedder + reranker (top-4 listwise)", "embedder + reranker (top-4 pairwise)"} <= set(
            table["model"]
        )
        assert meta["complete"].value is True and meta["encoded"].value > 0
        assert checks["mmeb_report_well_formed"].passed
        # no champion yet: the evaluated version (alias `candidate`) becomes the champion
        assert checks["champion_comparison"].passed
        assert meta["promotion"].value["promote"] and meta["promotion"].value["reason"] == "no champion yet"
        champ = client.get_model_version_by_alias("unime-v2-embedder", "champion")
        assert str(champ.version) == "1" and champ.tags["mmeb.promotion"].startswith("promoted")
        assert champ.tags["mmeb.subsets"] == ",".join(EVAL)

        # Again: every embedding comes from the cache, and the champion is already this version.
        meta2, checks2 = _materialize_report(root, uri, instance)
        # (the three embedding models are the same tiny checkpoint here, so they share a cache namespace)
        assert meta2["encoded"].value == 0
        assert meta2["cached"].value == meta["encoded"].value + meta["cached"].value
        assert meta2["overall"].value == meta["overall"].value
        # every (rerank mode, subset) reranked once, then read back from the cache
        assert meta["reranked_subsets_cached"].value == 0 and meta2["reranked_subsets_cached"].value == 2 * len(EVAL)
        assert checks2["champion_comparison"].passed and not meta2["promotion"].value["promote"]

        # A run launched for a new version (the sensor's run tag) with the same weights, against a
        # champion without stored scores: both are downloaded from the registry, the champion is
        # re-evaluated, and the tie keeps it.
        client.create_model_version("unime-v2-embedder", source=str(root / "registered"), tags=LINEAGE)
        client.set_model_version_tag("unime-v2-embedder", "1", "mmeb.scores", "{}")
        meta3, checks3 = _materialize_report(root, uri, instance, tags={"unime/embedder_version": "2"})
        decision = meta3["promotion"].value
        assert decision["candidate_version"] == "2" and meta3["encoded"].value == 0  # same weights: cached
        assert not decision["promote"] and decision["champion_version"] == "1"
        assert decision["candidate_score"] == pytest.approx(decision["champion_score"])
        assert not checks3["champion_comparison"].passed  # kept: shown as a warning
        assert str(client.get_model_version_by_alias("unime-v2-embedder", "champion").version) == "1"
        assert client.get_model_version("unime-v2-embedder", "1").tags["mmeb.scores"] != "{}"
        for version in ("1", "2"):
            assert len(list((root / "assets" / "registry_models" / "unime-v2-embedder").glob(f"{version}-*"))) == 1
        assert "mmeb.scores" in client.get_model_version("unime-v2-embedder", "2").tags


def test_report_shows_protocol_counts_per_subset(report_env):
    """Per subset: rows whose top score is an exact tie (per model) and the reranker's unparsable
    listwise answers, in the Dagster metadata and as MLflow metrics; the official eval settings as
    MLflow params."""
    root, uri, client = report_env
    (root / "dg-protocol").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dg-protocol")) as instance:
        meta, _ = _materialize_report(root, uri, instance)
    table = meta["protocol"].value.splitlines()
    assert table[0].startswith("| subset | rows | retriever: tied (GT) |") and table[0].endswith("reranker: unparsable |")
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(rows) == set(EVAL)
    run = client.get_run(meta["mlflow_run_id"].value)
    params, metrics = run.data.params, run.data.metrics
    assert (params["rerank_unparsable"], params["rerank_hit"], params["tie_rule"]) == (
        "miss", "content", "argmax: ties to the ground truth")  # fmt: skip
    assert sum(metrics[f"rerank_unparsable.{n}"] for n in EVAL) == metrics["rerank_unparsable"] == meta["rerank_unparsable"].value
    for n in EVAL:
        assert rows[n].endswith(f"| {int(metrics[f'rerank_unparsable.{n}'])} |")
        tied, gt = int(metrics[f"embedder.tied_top.{n}"]), int(metrics[f"embedder.gt_tied.{n}"])
        assert f"| {tied} ({gt}) |" in rows[n]
