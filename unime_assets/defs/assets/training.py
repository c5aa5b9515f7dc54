"""Stages 4-5: the embedder (judge-score alignment) and the reranker (pairwise + listwise SFT).

Both train out of process: the asset writes a training spec (JSON) and the `training_set` rows
(parquet) under `<artifacts>/launch/<asset>/`, then starts `torchrun` (or `deepspeed`) on
`unime_assets.training.launch` through Dagster Pipes (`dg.PipesSubprocessClient`). Rank 0 streams
log lines and the final summary back through Pipes and writes per-step metrics straight into
this materialization's MLflow run (run id + tracking URI are in the spec). The asset then logs
the loss curve, registers the trained weights as a models-from-code pyfunc version with its
lineage tags and moves the `candidate` alias to it.

Crash safety (each step can be retried as is):
- The spec's key (every training input: spec fields, base checkpoint content, training rows) is
  written next to the finished weights; a retry with the same key reuses them instead of training.
- Registration: the model is logged, then a version created with its lineage and checkpoint
  fingerprint in one call (tracking/registry.py), then the alias moved. A retry after a kill finds
  the version of the same weights and only moves the alias; a kill before the version exists leaves
  no version, only an MLflow run that the next materialization closes as KILLED.
- The trained weights must differ from the base's: a run that changed nothing (1-2 steps, which
  the warmup runs at learning rate 0; all steps skipped) fails here instead of being registered and
  evaluated as a trained model (training/export_checks.py).
"""

import contextlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl

from unime_assets.defs.assets._common import run_metadata, upstream_run_ids
from unime_assets.defs.descriptions import describe_registered
from unime_assets.defs.metadata import figure, readable
from unime_assets.defs.partitions import JUDGES, judge_key
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.tracking import plots
from unime_assets.training.launch import SPEC_KEY_FILE

EMBEDDER_MODEL = "unime-v2-embedder"
RERANKER_MODEL = "unime-v2-reranker"
PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "pillow", "numpy", "unime-assets"]


@contextlib.contextmanager
def _inference_files(ckpt: Path) -> Iterator[Path]:
    """The checkpoint as MLflow should copy it: weights, configs, processor and adapter, without the
    DeepSpeed resume states (optimizer moments are not needed to embed). Hard links, no copies."""
    with tempfile.TemporaryDirectory(prefix=f".{ckpt.name}.mlflow.", dir=ckpt.parent) as tmp:
        dest = Path(tmp) / ckpt.name
        shutil.copytree(ckpt, dest, ignore=shutil.ignore_patterns("checkpoints", "train_result.json", SPEC_KEY_FILE),
                        copy_function=_link_or_copy)  # fmt: skip
        yield dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _training_set_lineage(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Which materialization of `training_set` this model was trained on: its run id and event id."""
    tags = upstream_run_ids(context, ["training_set"])
    records = context.instance.fetch_materializations(dg.AssetKey("training_set"), limit=1).records
    tags["upstream.training_set.storage_id"] = str(records[0].storage_id) if records else ""
    return tags


def _register(context, run, tracking_uri: str, name: str, task: str, ckpt: Path, lineage: dict[str, str],
              example, output) -> tuple[str, bool]:  # fmt: skip
    """(version, reused): the version holding these weights, registered now or by an interrupted try."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from unime_assets.fingerprints import checkpoint_fingerprint
    from unime_assets.tracking import registry, set_alias
    from unime_assets.training.pyfunc import CODE_FILE

    fingerprint = checkpoint_fingerprint(ckpt)
    version = registry.find_version(tracking_uri, name, fingerprint)
    reused = version is not None
    if version is None:
        # The signature declares the `image_root` param; without it MLflow drops params at predict time.
        signature = infer_signature(example, output, params={"image_root": ""})
        with _inference_files(ckpt) as files:
            info = mlflow.pyfunc.log_model(name=name.replace("unime-v2-", ""), python_model=str(CODE_FILE),
                                           model_config={"task": task}, artifacts={"checkpoint": str(files)},
                                           signature=signature, pip_requirements=PIP_REQUIREMENTS)  # fmt: skip
        registry.fault_point("logged")
        version = registry.create_version(tracking_uri, name, info.model_uri, run.run_id, fingerprint, lineage)
        registry.fault_point("registered")
    else:
        context.log.warning(f"{name} version {version} already holds these weights (an interrupted "
                            "registration): moving the alias only")  # fmt: skip
    set_alias(tracking_uri, name, "candidate", version)  # the latest trained; `champion` is set by evaluation
    registry.fault_point("aliased")
    return version, reused


def _spec_key(spec, base: Path, training_set: pl.DataFrame) -> str:
    """Everything a training run depends on: the spec (reporting fields aside), the base checkpoint's
    content and the training rows."""
    from dataclasses import asdict

    from unime_assets.fingerprints import checkpoint_fingerprint, hash_fields
    from unime_assets.training.launch import data_hash

    fields = {k: v for k, v in asdict(spec).items() if k not in ("mlflow_tracking_uri", "mlflow_run_id", "log_every",
                                                                 "spec_key")}  # fmt: skip
    return hash_fields("train-spec", json.dumps(fields, sort_keys=True, default=str), checkpoint_fingerprint(base),
                       data_hash(training_set))[:32]  # fmt: skip


def finished_weights(out: Path, key: str) -> bool:
    """The output folder holds a finished training of exactly this spec (weights, summary, key)."""
    from unime_assets.training.loop import RESULT_FILE

    marker = out / SPEC_KEY_FILE
    try:
        return (out / RESULT_FILE).is_file() and json.loads(marker.read_text()).get("spec_key") == key
    except (OSError, ValueError):
        return False


def _train_out_of_process(
    context: dg.AssetExecutionContext, task: str, training_set: pl.DataFrame, s, section, out: Path,
    base: Path, run, tracking_uri: str,
) -> tuple[dict, dict]:  # fmt: skip
    """Write spec + data, run the launcher through Pipes; returns (train_result.json, Pipes metadata).
    A finished training of the same spec is reused, not repeated."""
    from unime_assets.models.loading import remote_code_allowed
    from unime_assets.training.launch import spec_from_settings

    data = launch_data_path(context, s)
    spec = spec_from_settings(task, s, section, base=base, training_set=data, out_dir=out, n_queries=training_set.height,
                              mlflow_tracking_uri=tracking_uri, mlflow_run_id=run.run_id,
                              trust_remote_code=remote_code_allowed(base))  # fmt: skip
    run.log_params({"total_steps": spec.steps, "total_warmup_steps": spec.warmup_steps})
    return launch_training(context, spec, training_set, run, processes=section.processes, launcher=section.launcher)


def launch_data_path(context: dg.AssetExecutionContext, s) -> Path:
    """Where an asset's launch writes the rows its ranks read (beside its spec.json)."""
    return s.artifacts_root / "launch" / context.asset_key.to_user_string() / "training_set.parquet"


def launch_training(context: dg.AssetExecutionContext, spec, rows: pl.DataFrame, run, *, processes: int,
                    launcher: str) -> tuple[dict, dict]:  # fmt: skip
    """Run `spec` (a training.launch.TrainSpec whose `training_set` is where `rows` go) on `processes`
    ranks (0: one per GPU, 1 on CPU) through Dagster Pipes; returns (train_result.json, Pipes metadata).
    A finished training of the same spec, base and rows is reused, not repeated."""
    from unime_assets.io import write_parquet
    from unime_assets.training.launch import default_processes, launch_command, launch_env
    from unime_assets.training.loop import read_result

    out, base = Path(spec.out_dir), Path(spec.base_path)
    spec.spec_key = _spec_key(spec, base, rows)
    if finished_weights(out, spec.spec_key):
        context.log.warning(f"{out} holds a finished {spec.task} training of this exact spec: reusing it")
        return read_result(out), {"reused_weights": True}
    data = Path(spec.training_set)
    write_parquet(rows, data)
    spec_path = spec.write(data.with_name("spec.json"))
    processes = processes or default_processes()
    cmd = launch_command(spec_path, processes, launcher)
    run.log_params({"launch.processes": processes, "launch.command": shlex.join(cmd)})  # resolved
    context.log.info(f"launching {spec.task} training: {shlex.join(cmd)}")
    invocation = dg.PipesSubprocessClient(env=launch_env(spec.torch_threads)).run(
        command=cmd, context=context, extras={"spec": str(spec_path)}
    )
    reported: dict = {"reused_weights": False}
    for res in invocation.get_results(implicit_materializations=False):
        reported.update(res.metadata or {})
    return read_result(out), reported


def _settings_params(section) -> dict:
    lora = {f"lora.{k}": v for k, v in section.lora.model_dump().items()}
    return {**section.model_dump(exclude={"lora"}), **lora}  # launch settings (processes, ...) included


def _result_metadata(result: dict, reported: dict) -> dict:
    losses = result["losses"]
    return {"first_loss": losses[0], "final_loss": losses[-1], "steps": len(losses),
            "train_seconds": round(result["seconds"], 1), "processes": result["world_size"],
            "resumed_from_step": result["resumed_from"], **reported}  # fmt: skip


def _train_and_register(context: dg.AssetExecutionContext, task: str, training_set: pl.DataFrame, s, section,
                        base: Path, mlflow: MlflowResource, *, model: str, title: str, upstream: list[str],
                        params: dict, example: pd.DataFrame, output: np.ndarray,
                        extra_meta: dict) -> dg.MaterializeResult:  # fmt: skip
    """What both training assets do: train (or reuse), check, log the curve, register, report."""
    from unime_assets.training.export_checks import identical_weights

    asset = context.asset_key.to_user_string()
    out = s.asset_dir(asset)
    run_url = f"{mlflow.dagster_url()}/runs/{context.run_id}"
    lineage = {"dagster.run_id": context.run_id, "dagster.run_url": run_url, "dagster.asset_key": asset,
               **_training_set_lineage(context), **upstream_run_ids(context, upstream)}  # fmt: skip
    with mlflow.run(context) as run:
        run.log_params({"base": base, **_settings_params(section), "queries": training_set.height, **params,
                        **lineage})  # fmt: skip
        result, reported = _train_out_of_process(context, task, training_set, s, section, out, base, run,
                                                 mlflow.uri())  # fmt: skip
        if identical_weights(out, base):
            raise dg.Failure(f"{asset}: the trained weights in {out} are identical to the base {base}: training "
                             f"changed nothing (losses {result['losses'][:3]}...); not registered")  # fmt: skip
        curve = figure(run, plots.loss_curve(result["losses"], title), "loss", "loss_curve")
        version, reused = _register(context, run, mlflow.uri(), model, task, out, lineage, example, output)
        describe_registered(mlflow.uri(), model, version, asset=asset, run_url=run_url, training_set=training_set,
                            settings=s, base=base)  # fmt: skip
    context.log.info(f"registered {model} version {version}" + (" (found from an interrupted try)" if reused else ""))
    return dg.MaterializeResult(metadata=readable({
        "path": dg.MetadataValue.path(str(out)), **_result_metadata(result, reported), **extra_meta,
        "registered_model": model, "model_version": version, "registration_reused": reused,
        "model_uri": f"models:/{model}/{version}", **curve, **run_metadata(run),
    }))  # fmt: skip


EMBEDDER_DOC = ("UniME-V2 embedder: symmetric KL between softmax(cos/τ) and softmax(judge/τ) over the positive "
                "and k mined negatives; last-token pooling; GradCache; torchrun/deepspeed launch through Dagster "
                "Pipes, DeepSpeed ZeRO, resumable checkpoints; registered in MLflow.")  # fmt: skip
RERANKER_DOC = ("UniME-V2-Reranker: pairwise Yes/No + listwise 'Ans: (i)' SFT with the official recipe (label mask, "
                "prompt wording, slot draw, images <= 300*28*28 px, cosine LR, one epoch), query and candidate texts "
                "included; same launcher as the embedder.")  # fmt: skip
TRAINING_KINDS = {"pytorch", "deepspeed", "mlflow"}


@dg.asset(group_name="training", kinds=TRAINING_KINDS, pool="gpu", deps=["pretrained_base"], description=EMBEDDER_DOC)
def embedder_checkpoint(context: dg.AssetExecutionContext, training_set: pl.DataFrame, settings: SettingsResource,
                        mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.models.loading import check_checkpoint_dir
    from unime_assets.models.processors import text_config

    s = settings.get()
    e = s.embedder
    base = check_checkpoint_dir(s.embedder_base_path, "embedder base")
    dim = text_config(base)["hidden_size"]
    return _train_and_register(
        context, "embedder", training_set, s, e, base, mlflow, model=EMBEDDER_MODEL, title=f"embedder ({e.loss})",
        upstream=[], params={"gradcache_chunk": e.gradcache_chunk, "image_size": e.image_size},
        example=pd.DataFrame({"text": ["a caption\n"], "image": [""]}), output=np.zeros((1, dim), dtype=np.float32),
        extra_meta={},
    )  # fmt: skip


@dg.asset(group_name="training", kinds=TRAINING_KINDS, pool="gpu", description=RERANKER_DOC,
          deps=[judge_key("judge_model", JUDGES[0])])  # the reranker starts from the (first) judge
def reranker_checkpoint(context: dg.AssetExecutionContext, training_set: pl.DataFrame, settings: SettingsResource,
                        mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.models.loading import check_checkpoint_dir

    s = settings.get()
    base = check_checkpoint_dir(s.reranker_base_path, "reranker base")
    r = s.reranker
    # Each query contributes its pairwise Yes, pairwise No and listwise sequences: a batch is that many times larger.
    return _train_and_register(
        context, "reranker", training_set, s, r, base, mlflow, model=RERANKER_MODEL, title="reranker SFT",
        upstream=[f"judge_model/{JUDGES[0]}"], params={"sequences_per_query": r.sequences_per_query},
        example=pd.DataFrame({"query_text": ["q\n"], "query_image": [""], "cand_text": ["c"], "cand_image": [""]}),
        output=np.zeros(1, dtype=np.float64),
        extra_meta={"sequences": r.sequences_per_query * training_set.height},
    )  # fmt: skip
