"""Stages 4-5: the embedder (judge-score alignment) and the reranker (pairwise + listwise SFT).

Both train out of process: the asset writes a training spec (JSON) and the `training_set` rows
(parquet) under `<artifacts>/launch/<asset>/`, then starts `torchrun` (or `deepspeed`) on
`unime_assets.training.launch` through Dagster Pipes (`dg.PipesSubprocessClient`). Rank 0 streams
log lines and the final summary back through Pipes and writes per-step metrics straight into
this materialization's MLflow run (run id + tracking URI are in the spec). The asset then logs
the loss curve, registers the trained weights as a pyfunc model version with lineage tags and
moves the `candidate` alias to it.
"""

import contextlib
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
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.tracking import plots

EMBEDDER_MODEL = "unime-v2-embedder"
RERANKER_MODEL = "unime-v2-reranker"
PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "pillow", "numpy", "unime-assets"]


@contextlib.contextmanager
def _inference_files(ckpt: Path) -> Iterator[Path]:
    """The checkpoint as MLflow should copy it: weights, configs, processor and adapter, without the
    DeepSpeed resume states (optimizer moments are not needed to embed). Hard links, no copies."""
    with tempfile.TemporaryDirectory(prefix=f".{ckpt.name}.mlflow.", dir=ckpt.parent) as tmp:
        dest = Path(tmp) / ckpt.name
        shutil.copytree(ckpt, dest, ignore=shutil.ignore_patterns("checkpoints", "train_result.json"),
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


def _register(
    run, tracking_uri: str, name: str, python_model, ckpt: Path, lineage: dict[str, str], example, output
) -> str:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from unime_assets.tracking import set_alias, tag_version

    # The signature declares the `image_root` param; without it MLflow drops params at predict time.
    signature = infer_signature(example, output, params={"image_root": ""})
    with _inference_files(ckpt) as files:
        info = mlflow.pyfunc.log_model(name=name.replace("unime-v2-", ""), python_model=python_model,
                                       artifacts={"checkpoint": str(files)}, registered_model_name=name,
                                       signature=signature, pip_requirements=PIP_REQUIREMENTS)  # fmt: skip
    version = str(info.registered_model_version)
    tag_version(tracking_uri, name, version, {**lineage, "mlflow.run_id": run.run_id})
    set_alias(tracking_uri, name, "candidate", version)  # the latest trained; `champion` is set by evaluation
    return version


def _train_out_of_process(
    context: dg.AssetExecutionContext, task: str, training_set: pl.DataFrame, s, section, out: Path,
    base: Path, run, tracking_uri: str, **task_fields,
) -> tuple[dict, dict]:  # fmt: skip
    """Write spec + data, run the launcher through Pipes; returns (train_result.json, Pipes metadata)."""
    from unime_assets.io import write_parquet
    from unime_assets.training.launch import TrainSpec, default_processes, launch_command, launch_env
    from unime_assets.training.loop import read_result

    asset = context.asset_key.to_user_string()
    launch_dir = s.artifacts_root / "launch" / asset
    data = write_parquet(training_set, launch_dir / "training_set.parquet")
    steps = section.total_steps(training_set.height)  # `steps`, or `epochs` over this training set
    warmup = section.total_warmup(steps)
    run.log_params({"total_steps": steps, "total_warmup_steps": warmup})
    spec = TrainSpec(
        task=task, base_path=str(base), training_set=str(data), image_root=str(s.train_image_root),
        out_dir=str(out), steps=steps, batch_size=section.batch_size, lr=section.lr,
        warmup_steps=warmup, lr_schedule=section.lr_schedule, weight_decay=section.weight_decay,
        grad_clip=section.grad_clip, grad_accum=section.grad_accum, zero_stage=section.zero_stage,
        bf16=section.bf16, seed=section.seed, lora=section.lora.model_dump(),
        checkpoint_every=section.checkpoint_every,
        keep_checkpoints=section.keep_checkpoints, mlflow_tracking_uri=tracking_uri,
        mlflow_run_id=run.run_id, log_every=section.log_every, **task_fields,
    )  # fmt: skip
    spec_path = spec.write(launch_dir / "spec.json")
    processes = section.processes or default_processes()
    launcher = section.launcher
    cmd = launch_command(spec_path, processes, launcher)
    run.log_params({"launch.processes": processes, "launch.command": shlex.join(cmd)})  # resolved
    context.log.info(f"launching {task} training: {shlex.join(cmd)}")
    invocation = dg.PipesSubprocessClient(env=launch_env()).run(
        command=cmd, context=context, extras={"spec": str(spec_path)}
    )
    reported: dict = {}
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


@dg.asset(group_name="training", kinds={"pytorch", "deepspeed", "mlflow"}, pool="gpu",
          description="UniME-V2 embedder: symmetric KL between softmax(cos/τ) and softmax(judge/τ) over "
          "the positive and k mined negatives; last-token pooling; GradCache; torchrun/deepspeed launch "
          "through Dagster Pipes, DeepSpeed ZeRO, resumable checkpoints; registered in MLflow.")  # fmt: skip
def embedder_checkpoint(context: dg.AssetExecutionContext, training_set: pl.DataFrame,
                        settings: SettingsResource,
                        mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.models.loading import check_checkpoint_dir
    from unime_assets.models.processors import text_config
    from unime_assets.training.pyfunc import EmbedderPyfunc

    s = settings.get()
    e = s.embedder
    base = check_checkpoint_dir(s.embedder_base.path, "embedder base")
    out = s.asset_dir("embedder_checkpoint")
    lineage = {"dagster.run_id": context.run_id, "dagster.asset_key": "embedder_checkpoint",
               **_training_set_lineage(context)}  # fmt: skip
    gradcache = e.gradcache_chunk
    with mlflow.run(context) as run:
        run.log_params({"base": base, **_settings_params(e), "gradcache_chunk": gradcache,
                        "image_size": e.image_size, "queries": training_set.height, **lineage})  # fmt: skip
        result, reported = _train_out_of_process(
            context, "embedder", training_set, s, e, out, base, run, mlflow.uri(),
            k_negatives=e.k_negatives, loss=e.loss, temperature=e.temperature, gradcache_chunk=gradcache,
            loss_eps=e.loss_eps, image_size=e.image_size, max_len=e.max_len,
        )  # fmt: skip
        curve = run.log_figure(plots.loss_curve(result["losses"], f"embedder ({e.loss})"), "loss")
        example = pd.DataFrame({"text": ["a caption\n"], "image": [""]})
        dim = text_config(out)["hidden_size"]
        version = _register(run, mlflow.uri(), EMBEDDER_MODEL, EmbedderPyfunc(), out, lineage, example,
                            np.zeros((1, dim), dtype=np.float32))  # fmt: skip
    context.log.info(f"registered {EMBEDDER_MODEL} version {version}")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)), **_result_metadata(result, reported),
        "registered_model": EMBEDDER_MODEL, "model_version": version,
        "model_uri": f"models:/{EMBEDDER_MODEL}/{version}", "loss_curve": dg.MetadataValue.md(curve),
        **run_metadata(run),
    })  # fmt: skip


@dg.asset(group_name="training", kinds={"pytorch", "deepspeed", "mlflow"}, deps=["judge_model"], pool="gpu",
          description="UniME-V2-Reranker: pairwise Yes/No + listwise 'Ans: (i)' SFT with the official "
          "recipe (label mask, prompt wording, slot draw, images <= 300*28*28 px, cosine LR, one epoch), "
          "query and candidate texts included; same launcher as the embedder.")  # fmt: skip
def reranker_checkpoint(context: dg.AssetExecutionContext, training_set: pl.DataFrame,
                        settings: SettingsResource,
                        mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.models.loading import check_checkpoint_dir
    from unime_assets.training.pyfunc import RerankerPyfunc

    s = settings.get()
    r = s.reranker
    base = check_checkpoint_dir(s.reranker_base_path, "reranker base")
    out = s.asset_dir("reranker_checkpoint")
    lineage = {"dagster.run_id": context.run_id, "dagster.asset_key": "reranker_checkpoint",
               **_training_set_lineage(context), **upstream_run_ids(context, ["judge_model"])}  # fmt: skip
    with mlflow.run(context) as run:
        # Each query contributes 3 sequences (pairwise Yes, pairwise No, listwise): a batch is 3x as many.
        run.log_params({"base": base, **_settings_params(r), "queries": training_set.height,
                        "sequences_per_query": 3, **lineage})  # fmt: skip
        result, reported = _train_out_of_process(context, "reranker", training_set, s, r, out, base, run,
                                                 mlflow.uri(), max_pixels=r.max_pixels, label_mask=r.label_mask,
                                                 pairwise_prompt=r.pairwise_prompt,
                                                 listwise_slot=r.listwise_slot)  # fmt: skip
        curve = run.log_figure(plots.loss_curve(result["losses"], "reranker SFT"), "loss")
        example = pd.DataFrame(
            {"query_text": ["q\n"], "query_image": [""], "cand_text": ["c"], "cand_image": [""]}
        )
        version = _register(run, mlflow.uri(), RERANKER_MODEL, RerankerPyfunc(), out, lineage, example,
                            np.zeros(1, dtype=np.float64))  # fmt: skip
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)), **_result_metadata(result, reported),
        "sequences": 3 * training_set.height, "registered_model": RERANKER_MODEL, "model_version": version,
        "model_uri": f"models:/{RERANKER_MODEL}/{version}", "loss_curve": dg.MetadataValue.md(curve),
        **run_metadata(run),
    })  # fmt: skip
