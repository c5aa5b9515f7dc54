"""Stages 1-3 skipped: the embedder and reranker train from an imported official UniME-V2 score file
(the 50 real records of the release, with stand-in images at their paths)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from unime_assets.defs.io_managers import PolarsParquetIOManager
from unime_assets.defs.resources import MlflowResource, SettingsResource

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "unime_v2_example_scores.json"


def _stand_in_images(root: Path) -> int:
    paths = set()
    for rec in json.loads(FIXTURE.read_text()):
        paths |= {rec["query_image"], rec["pos_image"], *(img for _, img in rec["hard_negatives"])}
    paths.discard("")
    for i, rel in enumerate(sorted(paths)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(root / rel)
    return len(paths)


@pytest.mark.slow
def test_embedder_and_reranker_train_from_official_scores(tmp_path, embedded_home):
    from unime_assets.definitions import defs

    assert _stand_in_images(tmp_path / "images_root") > 0
    overrides = {
        "artifacts_root": str(tmp_path / "assets"),
        "train_image_root": str(tmp_path / "images_root"),
        "training_data": {"source": "official", "official_scores_file": str(FIXTURE)},
        "embedder": {"steps": 3}, "reranker": {"steps": 3},  # the first two steps run at lr 0
        "bootstrap": {"pretrain_steps": 0},  # the embedder starts from the configured base, not pretrained_base
        # no judge_model materialized: the reranker starts from the base Qwen2.5-VL, as in the paper
        "reranker_base": {"path": str(embedded_home / "models" / "tiny-qwen2.5-vl")},
    }  # fmt: skip
    resources = {
        "settings": SettingsResource(settings_file=str(embedded_home / "settings.yaml"),
                                     overrides_yaml=json.dumps(overrides)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                 artifact_root=str(tmp_path / "mlartifacts")),
        "io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "tables")),
    }  # fmt: skip
    (tmp_path / "dg").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dg")) as instance:
        result = dg.materialize([*defs.assets, *defs.asset_checks], resources=resources, instance=instance,
                                selection=["training_set", "embedder_checkpoint", "reranker_checkpoint"])  # fmt: skip
        assert result.success
        meta = result.asset_materializations_for_node("training_set")[0].metadata
        assert meta["source"].value == "official"

    ts = pl.read_parquet(tmp_path / "tables" / "training_set.parquet")
    assert ts.height == 50 and (ts["neg_texts"].list.len() == 10).all()
    assert set(ts["subset"]) >= {"A-OKVQA"}  # subset read from images/<Subset>/...
    # the training set is exported back in the official format, record for record
    exported = json.loads((tmp_path / "assets" / "training_set" / "unime_v2_scores.json").read_text())
    assert exported == json.loads(FIXTURE.read_text())
    for name in ("embedder_checkpoint", "reranker_checkpoint"):
        assert any((tmp_path / "assets" / name).rglob("*.safetensors")), name
