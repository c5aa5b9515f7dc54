"""The whole graph on the reduced embedded default, in a temporary Dagster instance and MLflow store."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from mlflow import MlflowClient

from unime_assets.cli import ASSETS
from unime_assets.defs.io_managers import PolarsParquetIOManager
from unime_assets.defs.resources import MlflowResource, SettingsResource


@pytest.mark.slow
def test_materialize_everything(tmp_path, embedded_home, settings):
    from unime_assets.definitions import defs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {
        "settings": SettingsResource(settings_file=str(embedded_home / "settings.yaml"),
                                     overrides_yaml=f"artifacts_root: {tmp_path / 'assets'}"),
        "mlflow": MlflowResource(tracking_uri=uri, artifact_root=str(tmp_path / "mlartifacts")),
        "io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "tables")),
    }  # fmt: skip
    (tmp_path / "dg").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dg")) as instance:
        result = dg.materialize([*defs.assets, *defs.asset_checks], resources=resources, instance=instance)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks and all(checks.values()), checks
        for name in ASSETS:
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            assert event is not None, name
            assert "mlflow_run_id" in event.asset_materialization.metadata, name
        run_id = result.run_id

    # every materialization has its MLflow run, tagged with where it came from
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("unime-v2")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`dagster.run_id` = '{run_id}'")
    assert sorted(r.data.tags["dagster.asset_key"] for r in runs) == sorted(ASSETS)
    assert all(r.info.status == "FINISHED" and "dagster.partition" in r.data.tags for r in runs)

    # registry versions with the `candidate` alias and lineage tags
    for name in ("unime-v2-embedder", "unime-v2-reranker"):
        mv = client.get_model_version_by_alias(name, "candidate")
        assert mv.tags["dagster.run_id"] == run_id and mv.tags["upstream.mined_negatives.run_id"] == run_id

    # data contracts between the stages
    tables = tmp_path / "tables"
    train, pool = pl.read_parquet(tables / "mmeb_train.parquet"), pl.read_parquet(tables / "candidate_pool.parquet")
    judge, mined = pl.read_parquet(tables / "judge_scores.parquet"), pl.read_parquet(tables / "mined_negatives.parquet")
    assert train["pair_id"].to_list() == pool["pair_id"].to_list() == judge["pair_id"].to_list()
    assert (judge["cand_scores"].list.len() == pool["cand_ids"].list.len()).all()
    assert (mined["neg_cand_ids"].list.len() == settings.mining.n_negatives).all()
    report = pl.read_parquet(tables / "mmeb_report.parquet")
    assert set(report["subset"]) == set(settings.eval_subset_names)
    assert report["model"].n_unique() == 4 and report["precision_at_1"].is_between(0, 1).all()

    # the registered embedder loads through MLflow and embeds text and images
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model("models:/unime-v2-embedder@candidate")
    import pandas as pd

    vecs = model.predict(pd.DataFrame({"text": ["red", "<|image_1|>\nRepresent the given image.\n"],
                                       "image": ["", train.filter(pl.col("pos_image_path") != "")["pos_image_path"][0]]}),
                         params={"image_root": str(settings.train_image_root)})  # fmt: skip
    assert vecs.shape == (2, 128)
    assert abs(float((vecs[0] ** 2).sum()) - 1.0) < 1e-4 and abs(float(vecs[0] @ vecs[1])) < 0.9999
