"""Automation: jobs, the changed-train-data schedule, the new-embedder sensor and the declarative
automation of the mining chain, evaluated with Dagster's testing APIs on temporary instances."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from unime_assets.definitions import defs
from unime_assets.defs import automation as auto
from unime_assets.defs.partitions import JUDGE_POOL, TRAIN_SUBSETS
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.fingerprints import files_stat_fingerprint

A, B, C = TRAIN_SUBSETS[:3]


def test_jobs_select_the_stages_with_retries_and_time_limits():
    expected = {
        "ingest_train": {"mmeb_train"},
        "mine": {"candidate_pool", "judge_scores/qwen25vl", "judge_ensemble", "mined_negatives"},
        "train": {"training_set", "embedder_checkpoint", "reranker_checkpoint"},
    }
    for name, keys in expected.items():
        job = defs.resolve_job_def(name)
        assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == keys, name
    evaluate = {k.to_user_string() for k in defs.resolve_job_def("evaluate").asset_layer.selected_asset_keys}
    assert "mmeb_report" in evaluate
    for name in ("ingest_train", "mine", "train", "evaluate"):
        tags = defs.resolve_job_def(name).run_tags
        assert int(tags["dagster/max_retries"]) >= 1 and int(tags["dagster/max_runtime"]) > 0, name
    assert defs.resolve_job_def("mine").partitions_def.get_partition_keys() == TRAIN_SUBSETS
    graph = defs.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == {"candidate_index", "candidate_pool", "judge_scores/qwen25vl", "judge_ensemble",
                         "mined_negatives"}  # fmt: skip
    # `gpu` unless the loaded profile's `judging.pool` says otherwise (the demo's: none; the next test)
    assert graph.get(dg.AssetKey(["judge_scores", "qwen25vl"])).pools == ({JUDGE_POOL} if JUDGE_POOL else set())


def test_the_judge_scores_pool_follows_the_profile(embedded_home, tmp_path):
    """`judging.pool` is the judge_scores steps' Dagster pool, fixed when the code location loads: the demo
    profile sets none (its tiny judges score two subsets at once), a profile without it keeps `gpu`. Loaded
    in a fresh process, as Dagster loads a code location."""
    from unime_assets.embedded import SIZES

    assert SIZES["demo"].overrides["judging"]["pool"] is None and SIZES["ablation"].overrides["judging"]["pool"] is None
    profile = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    probe = ("from unime_assets.definitions import defs; import dagster as dg; "
             "print(sorted(defs.resolve_asset_graph().get(dg.AssetKey(['judge_scores', 'qwen25vl'])).pools))")  # fmt: skip
    pools = {}
    for name in ("none", "gpu"):
        judging = {k: v for k, v in profile.get("judging", {}).items() if k != "pool"}
        profile["judging"] = {**judging, "pool": None} if name == "none" else judging  # "gpu": the default
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(profile))
        env = {**os.environ, "UNIME_SETTINGS": str(path)}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        pools[name] = out.stdout.strip().splitlines()[-1]
    assert pools == {"none": "[]", "gpu": "['gpu']"}


def test_the_models_job_runs_its_steps_in_processes_and_the_others_in_process(monkeypatch):
    """On the in-process default only `models` (independent, long chains) runs steps in processes; a
    configured executor (UNIME_EXECUTOR) is left to every job."""
    if os.environ.get("UNIME_EXECUTOR", "in_process") != "in_process":
        pytest.skip("the code location was loaded with UNIME_EXECUTOR set")
    assert defs.resolve_job_def("models").executor_def.name == "multiprocess"
    for name in ("ingest_train", "index", "mine", "train", "evaluate"):
        assert defs.resolve_job_def(name).executor_def.name == "in_process", name
    monkeypatch.setenv("UNIME_EXECUTOR", "k8s")
    assert auto._models_executor() == {}
    monkeypatch.setenv("UNIME_EXECUTOR", "in_process")
    assert auto._models_executor() == {"executor_def": dg.multiprocess_executor}


def test_instance_config_enables_retries_monitoring_and_the_gpu_pool():
    raw = yaml.safe_load((Path(__file__).parents[2] / "dagster.yaml").read_text())
    assert raw["run_retries"]["enabled"] and raw["run_monitoring"]["enabled"]
    assert raw["concurrency"]["pools"]["default_limit"] >= 1


# --- schedule -------------------------------------------------------------------------------------


def _settings_file(tmp_path: Path, train_root: Path) -> Path:
    """A valid settings profile whose train_root is `train_root` (the schedule reads nothing else)."""
    raw = {"profile": "test", "catalog": "synthetic", "train_root": str(train_root),
           "train_image_root": str(tmp_path), "eval_root": str(tmp_path), "eval_image_root": str(tmp_path),
           "retriever": {}, "judge": {}, "embedder_base": {}, "artifacts_root": str(tmp_path / "artifacts")}  # fmt: skip
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _write(path: Path, content: bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _materialize_train(instance: dg.DagsterInstance, subset: str, **metadata) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization("mmeb_train", partition=subset, metadata=metadata)
    )


def _tick(instance, settings_file) -> list[dg.RunRequest] | dg.SkipReason:
    context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def(),
                                        resources={"settings": SettingsResource(settings_file=str(settings_file))})  # fmt: skip
    data = auto.refresh_changed_train_subsets.evaluate_tick(context)
    return data.run_requests or data.skip_message


def test_schedule_requests_new_and_changed_train_partitions(tmp_path):
    root = tmp_path / "train"
    old = time.time() - 3600
    _write(root / A / "original-00000.parquet", b"a" * 10, old)
    _write(root / B / "original-00000.parquet", b"b" * 10, old)
    _write(root / C / "original-00000.parquet", b"c" * 10, old)
    settings_file = _settings_file(tmp_path, root)
    with dg.instance_for_test() as instance:
        fp_a = files_stat_fingerprint(auto.source_files(root, A))
        _materialize_train(instance, A, source_fingerprint=fp_a)  # recorded and unchanged
        _materialize_train(instance, B)  # made by the CLI: no fingerprint, files older than it
        requests = _tick(instance, settings_file)  # C was never materialized
        assert [(r.partition_key, r.tags["unime/refresh_reason"]) for r in requests] == [(C, "new")]
        (req,) = requests
        assert req.job_name in (None, "ingest_train") and req.tags[auto.FINGERPRINT_TAG] in req.run_key

        _write(root / A / "original-00001.parquet", b"new shard")  # a file added
        os.utime(root / B / "original-00000.parquet")  # rewritten after B's materialization
        _materialize_train(
            instance, C, source_fingerprint=files_stat_fingerprint(auto.source_files(root, C))
        )
        requests = _tick(instance, settings_file)
        assert {r.partition_key: r.tags["unime/refresh_reason"] for r in requests} == {
            A: "changed", B: "modified after the last materialization"}  # fmt: skip
        assert all(r.tags["dagster/partition"] == r.partition_key for r in requests)


@pytest.mark.slow
def test_schedule_runs_complete_and_the_next_tick_skips(embedded_home, settings, tmp_path, monkeypatch):
    """Executes what the schedule requests (two partitions of the `ingest_train` job, run tags from the
    request) and ticks again: the recorded fingerprints make it skip; touching one subset re-requests it."""
    monkeypatch.setenv("UNIME_SETTINGS", str(embedded_home / "settings.yaml"))
    monkeypatch.setenv("UNIME_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    subsets = [s for s in TRAIN_SUBSETS if s in settings.train_subset_names][:2]
    job = defs.resolve_job_def("ingest_train")
    with dg.instance_for_test() as instance:
        for s in settings.train_subset_names:
            if s not in subsets:  # only two partitions are new
                _materialize_train(instance, s, source_fingerprint=files_stat_fingerprint(
                    auto.source_files(settings.train_root, s, settings.train_split)))  # fmt: skip
        requests = _tick(instance, embedded_home / "settings.yaml")
        assert sorted(r.partition_key for r in requests) == sorted(subsets)
        for r in requests:
            result = job.execute_in_process(partition_key=r.partition_key, instance=instance, tags=r.tags)
            assert result.success
        assert instance.get_materialized_partitions(dg.AssetKey("mmeb_train")) >= set(subsets)
        assert isinstance(_tick(instance, embedded_home / "settings.yaml"), str)  # skip: nothing changed

        files = auto.source_files(settings.train_root, subsets[0], settings.train_split)
        os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 1_000_000_000))
        requests = _tick(instance, embedded_home / "settings.yaml")
        assert [r.partition_key for r in requests] == [subsets[0]]


# --- sensor ---------------------------------------------------------------------------------------


def _register(client, n: int) -> None:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # exists after the first call
        client.create_registered_model(auto.EMBEDDER_MODEL)
    for _ in range(n):
        client.create_model_version(
            auto.EMBEDDER_MODEL, source="file:///nowhere", tags={"dagster.run_id": "r1"}
        )


def test_sensor_requests_one_evaluation_per_new_embedder_version(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    resources = {"mlflow": MlflowResource(tracking_uri=uri)}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources, definitions=defs)
        assert isinstance(auto.evaluate_new_embedder(context), dg.SkipReason)  # nothing registered yet

        _register(client, 2)  # first tick: only the latest version is evaluated
        result = auto.evaluate_new_embedder(dg.build_sensor_context(instance=instance, resources=resources,
                                                                    definitions=defs))  # fmt: skip
        assert result.cursor == "2"
        (req,) = result.run_requests
        assert req.job_name == "evaluate" and req.run_key == f"{auto.EMBEDDER_MODEL}/2"
        assert (
            req.tags[auto.VERSION_TAG] == "2"
            and req.tags[auto.MODEL_URI_TAG] == f"models:/{auto.EMBEDDER_MODEL}/2"
        )
        assert req.tags["unime/embedder_dagster_run_id"] == "r1"

        context = dg.build_sensor_context(
            instance=instance, cursor="2", resources=resources, definitions=defs
        )
        assert isinstance(auto.evaluate_new_embedder(context), dg.SkipReason)  # no newer version

        _register(client, 2)  # versions 3 and 4 appear between two ticks: one run each
        context = dg.build_sensor_context(
            instance=instance, cursor="2", resources=resources, definitions=defs
        )
        result = auto.evaluate_new_embedder(context)
        assert [r.tags[auto.VERSION_TAG] for r in result.run_requests] == ["3", "4"] and result.cursor == "4"


# --- declarative automation -----------------------------------------------------------------------


# One judge in the embedded default: its judge_model / judge_scores assets and the ensemble.
JUDGE_MODEL = "judge_model/qwen25vl"
MINING = ("candidate_pool", "judge_scores/qwen25vl", "judge_ensemble", "mined_negatives")


def _report(instance, name: str, partitions=(None,)) -> None:
    for p in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey.from_user_string(name), partition=p))


def _requested(result) -> dict[str, set]:
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    return {k.to_user_string(): set(p) for k in keys if (p := result.get_requested_partitions(k))}


def test_changed_train_partition_rebuilds_the_index_then_remines_materialized_partitions():
    with dg.instance_for_test() as instance:
        _report(instance, "mmeb_train", [A, B])
        _report(instance, "mmeb_eval", ["SynColor"])
        for name in ("retriever_model", JUDGE_MODEL, "candidate_index"):
            _report(instance, name)
        for name in MINING:
            _report(instance, name, [A, B])
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0  # everything is current

        _report(instance, "mmeb_train", [A, C])  # the schedule's ingest_train runs: A changed, C new
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert _requested(result) == {"candidate_index": {None}}  # the index first, mining held back

        _report(instance, "candidate_index")  # the automation run rebuilt it
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        # every subset that was read is (re-)mined: cand_ids were renumbered and C is new; the others
        # (never read) stay untouched
        assert _requested(result) == {n: {A, B, C} for n in MINING}

        for name in MINING:
            _report(instance, name, [A, B, C])
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0
