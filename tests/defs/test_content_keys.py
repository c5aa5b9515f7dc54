"""End to end through the assets: an image replaced at the same path is never served stale judge
scores (judge_scores shards) or stale embeddings (mmeb_report's cache), while an unchanged rerun
reuses everything."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl
import pytest
import yaml
from PIL import Image

# The code location's first judge (one asset per judge: judge_scores/<name>).
from unime_assets.defs.partitions import JUDGES  # noqa: E402

JUDGE = JUDGES[0]
JUDGE_SCORES, JUDGE_NODE = dg.AssetKey(["judge_scores", JUDGE]), f"judge_scores__{JUDGE}"


def _replace(path) -> None:
    """New content at the same path (another picture, same format)."""
    with Image.open(path) as im:
        size, fmt = im.size, im.format
    Image.effect_noise(size, 90).convert("RGB").save(path, format=fmt)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, embedded_home, tiny_qwen2vl, tiny_qwen25vl):
    """A profile of its own: copies of the train and eval data (images get replaced), the tiny
    checkpoints used as they are (no bootstrap), its own tables and artifacts."""
    from unime_assets.config import load_settings
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    root = tmp_path_factory.mktemp("content")
    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    s = load_settings(embedded_home / "settings.yaml")
    shutil.copytree(s.train_root, root / "train")
    shutil.copytree(s.eval_root, root / "eval")
    shutil.copytree(s.eval_image_root, root / "eval_images")
    raw.update(train_root=str(root / "train"), train_image_root=str(root / "train"), eval_root=str(root / "eval"),
               eval_image_root=str(root / "eval_images"), artifacts_root=str(root / "assets"),
               train_subsets=["SynColor"], eval_subsets=["SynColor", "SynHue"])  # fmt: skip
    raw["bootstrap"]["enabled"] = False
    raw["evaluation"] = {**raw.get("evaluation", {}), "rerank": False}
    for name, src in (("retriever_model", tiny_qwen2vl), ("embedder_checkpoint", tiny_qwen2vl)):
        shutil.copytree(src, root / "assets" / name)
    (root / "s.yaml").write_text(yaml.safe_dump(raw))
    resources = {"settings": SettingsResource(settings_file=str(root / "s.yaml")),
                 "mlflow": MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"),
                 "io_manager": PolarsParquetIOManager(base_dir=str(root / "tables"))}  # fmt: skip
    return root, resources


def _run(resources, instance, selection, partition=None):
    from unime_assets.definitions import defs

    result = dg.materialize([*defs.assets, *defs.asset_checks], selection=selection, partition_key=partition,
                            resources=resources, instance=instance)  # fmt: skip
    assert result.success
    return result


def _meta(result, name):
    return {k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}


@pytest.mark.slow
def test_replaced_train_image_is_judged_again(chain):
    root, resources = chain
    # An instance (and definitions-state storage) of its own inside this module's tmp dir: an ephemeral
    # one leaves Dagster's context-wide state storage to whatever an earlier test left behind.
    (root / "dg-train").mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(root / "dg-train")) as instance:
        _run(resources, instance, ["mmeb_train"], "SynColor")
        _run(resources, instance, ["candidate_index"])
        _run(resources, instance, ["candidate_pool"], "SynColor")
        first = _meta(_run(resources, instance, [JUDGE_SCORES], "SynColor"), JUDGE_NODE)
        again = _meta(_run(resources, instance, [JUDGE_SCORES], "SynColor"), JUDGE_NODE)
        assert first["shards_scored"] >= 1 and again["shards_scored"] == 0  # unchanged: every shard reused
        before = pl.read_parquet(root / "tables" / "judge_scores" / JUDGE / "SynColor.parquet")
        train = pl.read_parquet(root / "tables" / "mmeb_train" / "SynColor.parquet")
        row = train.filter(pl.col("qry_image_path") != "").row(0, named=True)
        _replace(root / "train" / row["qry_image_path"])
        after_meta = _meta(_run(resources, instance, [JUDGE_SCORES], "SynColor"), JUDGE_NODE)
    after = pl.read_parquet(root / "tables" / "judge_scores" / JUDGE / "SynColor.parquet")
    assert after_meta["shards_scored"] >= 1  # the shard showing the image is scored again, not reused
    changed = before.join(after, on="pair_id").filter(pl.col("pos_score") != pl.col("pos_score_right"))
    assert row["pair_id"] in changed["pair_id"].to_list()


@pytest.mark.slow
def test_replaced_eval_image_is_encoded_again(chain):
    root, resources = chain
    (root / "dg-eval").mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(root / "dg-eval")) as instance:
        for p in ("SynColor", "SynHue"):
            _run(resources, instance, ["mmeb_eval"], p)
        _run(resources, instance, ["mmeb_report"])
        again = _meta(_run(resources, instance, ["mmeb_report"]), "mmeb_report")
        assert again["encoded"] == 0  # unchanged: every embedding from the cache
        ev = pl.read_parquet(root / "tables" / "mmeb_eval" / "SynColor.parquet")
        image = ev.filter(pl.col("qry_img_path") != "")["qry_img_path"][0]
        uses = ev.filter(pl.col("qry_img_path") == image).height
        _replace(root / "eval_images" / image)
        after = _meta(_run(resources, instance, ["mmeb_report"]), "mmeb_report")
    # re-encoded by each of the three embedding models (retriever, base, embedder); nothing else
    assert 0 < after["encoded"] <= 3 * uses
