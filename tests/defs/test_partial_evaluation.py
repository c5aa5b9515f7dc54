"""End to end through `mmeb_report`: a partial evaluation never moves `champion`, a version without
lineage is never promoted, and an evaluated embedder with the untrained base's weights fails its
check and is never promoted (the "trained 18.41 = base 18.41" report)."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml
from defs_helpers import nudge_weights
from mlflow import MlflowClient

EVAL = ["SynColor", "SynHue"]
MODEL = "unime-v2-embedder"


@pytest.fixture
def env(tmp_path, embedded_home, tiny_qwen2vl, tiny_qwen25vl):
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw.update(artifacts_root=str(tmp_path / "assets"), eval_subsets=EVAL)
    raw["evaluation"] = {**raw.get("evaluation", {}), "rerank": False}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    for name, src in (("retriever_model", tiny_qwen2vl), ("embedder_checkpoint", tiny_qwen2vl)):
        shutil.copytree(src, tmp_path / "assets" / name)
    nudge_weights(tmp_path / "assets" / "embedder_checkpoint")  # "trained"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    resources = {"settings": SettingsResource(settings_file=str(tmp_path / "s.yaml")),
                 "mlflow": MlflowResource(tracking_uri=uri), "io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "t"))}  # fmt: skip
    return tmp_path, resources, client


def _report(resources, instance, partitions, tags=None):
    from unime_assets.definitions import defs

    everything = [*defs.assets, *defs.asset_checks]
    for p in partitions:
        assert dg.materialize(everything, selection=["mmeb_eval"], partition_key=p, resources=resources,
                              instance=instance).success  # fmt: skip
    result = dg.materialize(everything, selection=["mmeb_report"], resources=resources, instance=instance, tags=tags)
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("mmeb_report")[0].metadata.items()}
    return meta, {c.check_name: c for c in result.get_asset_check_evaluations()}


def _champion(client):
    try:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)
    except Exception:
        return None


@pytest.mark.slow
def test_no_champion_move_after_a_partial_evaluation(env):
    tmp_path, resources, client = env
    client.create_model_version(MODEL, source="file:///x", tags={"dagster.run_id": "r1"})
    client.set_registered_model_alias(MODEL, "candidate", "1")
    with dg.DagsterInstance.ephemeral() as instance:
        meta, checks = _report(resources, instance, ["SynColor"])  # one of the two configured subsets
        assert meta["complete"] is False and _champion(client) is None  # not even "no champion yet"
        assert meta["promotion"]["reason"].startswith("partial evaluation") and not checks["champion_comparison"].passed
        assert checks["embedder_differs_from_base"].passed
        meta, _ = _report(resources, instance, ["SynHue"])  # now complete: promoted
        assert meta["complete"] is True and _champion(client) == "1"


@pytest.mark.slow
def test_versions_without_lineage_or_with_base_weights_are_never_promoted(env):
    tmp_path, resources, client = env
    client.create_model_version(MODEL, source="file:///x")  # 1: an interrupted registration, no lineage
    client.set_registered_model_alias(MODEL, "candidate", "1")
    with dg.DagsterInstance.ephemeral() as instance:
        meta, checks = _report(resources, instance, EVAL)
        assert meta["complete"] is True and _champion(client) is None
        assert "no lineage tags" in meta["promotion"]["reason"]
        # the checkpoint under evaluation is the untrained base: the check fails, nothing is promoted
        shutil.rmtree(tmp_path / "assets" / "embedder_checkpoint")
        import yaml as _yaml

        base = _yaml.safe_load((tmp_path / "s.yaml").read_text())["embedder_base"]["path"]
        shutil.copytree(base, tmp_path / "assets" / "embedder_checkpoint")
        client.create_model_version(MODEL, source="file:///x", tags={"dagster.run_id": "r2"})
        client.set_registered_model_alias(MODEL, "candidate", "2")
        meta, checks = _report(resources, instance, [])
    assert meta["embedder_identical_to_base"] is True and not checks["embedder_differs_from_base"].passed
    assert checks["embedder_differs_from_base"].severity == dg.AssetCheckSeverity.ERROR
    assert "untrained base's weights" in meta["promotion"]["reason"] and _champion(client) is None
