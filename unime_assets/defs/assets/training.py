"""Stages 4-5: the embedder (judge-score alignment) and the reranker (pairwise + listwise SFT),
both trained on DeepSpeed engines and registered in the MLflow model registry."""

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl

from unime_assets import plots
from unime_assets.defs.assets._common import run_metadata, step_logger, upstream_run_ids
from unime_assets.defs.resources import MlflowResource, SettingsResource

EMBEDDER_MODEL = "unime-v2-embedder"
RERANKER_MODEL = "unime-v2-reranker"
PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "pillow", "numpy", "unime-assets"]


def _register(
    run, tracking_uri: str, name: str, python_model, ckpt, lineage: dict[str, str], example, output
) -> str:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from unime_assets.tracking import set_alias, tag_version

    # The signature declares the `image_root` param; without it MLflow drops params at predict time.
    signature = infer_signature(example, output, params={"image_root": ""})
    info = mlflow.pyfunc.log_model(name=name.replace("unime-v2-", ""), python_model=python_model,
                                   artifacts={"checkpoint": str(ckpt)}, registered_model_name=name,
                                   signature=signature, pip_requirements=PIP_REQUIREMENTS)  # fmt: skip
    version = str(info.registered_model_version)
    tag_version(tracking_uri, name, version, {**lineage, "mlflow.run_id": run.run_id})
    set_alias(tracking_uri, name, "candidate", version)  # the latest trained; `champion` is set by evaluation
    return version


@dg.asset(group_name="training", kinds={"pytorch", "deepspeed", "mlflow"}, pool="gpu",
          description="UniME-V2 embedder: symmetric KL between softmax(cos/τ) and softmax(judge/τ) over the "
          "positive and k mined negatives; last-token pooling; DeepSpeed ZeRO; registered in MLflow.")  # fmt: skip
def embedder_checkpoint(context: dg.AssetExecutionContext, training_set: pl.DataFrame, settings: SettingsResource,
                        mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.models.loading import check_checkpoint_dir
    from unime_assets.models.processors import text_config
    from unime_assets.models.pyfunc import EmbedderPyfunc
    from unime_assets.training.data import embedder_examples
    from unime_assets.training.engine import EngineConfig
    from unime_assets.training.loops import train_embedder

    s = settings.get()
    e = s.embedder
    base = check_checkpoint_dir(s.embedder_base.path, "embedder base")
    examples = embedder_examples(training_set, e.k_negatives)
    cfg = EngineConfig(micro_batch_size=e.batch_size, total_steps=e.steps, lr=e.lr, warmup_steps=e.warmup_steps,
                       grad_accum=e.grad_accum, zero_stage=e.zero_stage)  # fmt: skip
    out = s.asset_dir("embedder_checkpoint")
    lineage = {"dagster.run_id": context.run_id, "dagster.asset_key": "embedder_checkpoint",
               **upstream_run_ids(context, ["training_set"])}  # fmt: skip
    with mlflow.run(context) as run:
        run.log_params({"base": base, **e.model_dump(exclude={"lora"}), **{f"lora.{k}": v for k, v in
                        e.lora.model_dump().items()}, "examples": len(examples), **lineage})  # fmt: skip
        result = train_embedder(base, examples, s.train_image_root, out, cfg, mode=e.loss, temperature=e.temperature,
                                lora=e.lora, seed=e.seed, log=step_logger(context, run))  # fmt: skip
        curve = run.log_figure(plots.loss_curve(result.losses, f"embedder ({e.loss})"), "loss")
        example = pd.DataFrame({"text": ["a caption\n"], "image": [""]})
        dim = text_config(out)["hidden_size"]
        version = _register(run, mlflow.uri(), EMBEDDER_MODEL, EmbedderPyfunc(), out, lineage, example,
                            np.zeros((1, dim), dtype=np.float32))  # fmt: skip
    context.log.info(f"registered {EMBEDDER_MODEL} version {version}")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)), "final_loss": result.losses[-1], "first_loss": result.losses[0],
        "train_seconds": round(result.seconds, 1), "steps": e.steps, "registered_model": EMBEDDER_MODEL,
        "model_version": version, "model_uri": f"models:/{EMBEDDER_MODEL}/{version}",
        "loss_curve": dg.MetadataValue.md(curve), **run_metadata(run),
    })  # fmt: skip


@dg.asset(group_name="training", kinds={"pytorch", "deepspeed", "mlflow"}, deps=["judge_model"], pool="gpu",
          description="UniME-V2-Reranker: pairwise Yes/No + listwise 'Ans: (i)' SFT, loss on assistant tokens only, "
          "query and candidate texts included, positive slot uniform.")  # fmt: skip
def reranker_checkpoint(context: dg.AssetExecutionContext, training_set: pl.DataFrame, settings: SettingsResource,
                        mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.models.loading import check_checkpoint_dir
    from unime_assets.models.pyfunc import RerankerPyfunc
    from unime_assets.training.data import reranker_sft_examples
    from unime_assets.training.engine import EngineConfig
    from unime_assets.training.loops import train_sft

    s = settings.get()
    r = s.reranker
    base = check_checkpoint_dir(s.reranker_base_path, "reranker base")
    examples = reranker_sft_examples(training_set, seed=r.seed)
    # Each query contributes 3 sequences; a "batch" of queries is 3x as many sequences.
    cfg = EngineConfig(micro_batch_size=r.batch_size * 3, total_steps=r.steps, lr=r.lr, warmup_steps=r.warmup_steps,
                       grad_accum=r.grad_accum, zero_stage=r.zero_stage)  # fmt: skip
    out = s.asset_dir("reranker_checkpoint")
    lineage = {"dagster.run_id": context.run_id, "dagster.asset_key": "reranker_checkpoint",
               **upstream_run_ids(context, ["training_set", "judge_model"])}  # fmt: skip
    with mlflow.run(context) as run:
        run.log_params({"base": base, **r.model_dump(exclude={"lora"}), **{f"lora.{k}": v for k, v in
                        r.lora.model_dump().items()}, "sequences": len(examples), **lineage})  # fmt: skip
        result = train_sft(base, examples, s.train_image_root, out, cfg, role="reranker", lora=r.lora,
                           seed=r.seed, log=step_logger(context, run))  # fmt: skip
        curve = run.log_figure(plots.loss_curve(result.losses, "reranker SFT"), "loss")
        example = pd.DataFrame(
            {"query_text": ["q\n"], "query_image": [""], "cand_text": ["c"], "cand_image": [""]}
        )
        version = _register(run, mlflow.uri(), RERANKER_MODEL, RerankerPyfunc(), out, lineage, example,
                            np.zeros(1, dtype=np.float64))  # fmt: skip
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)), "final_loss": result.losses[-1], "first_loss": result.losses[0],
        "train_seconds": round(result.seconds, 1), "sequences": len(examples), "registered_model": RERANKER_MODEL,
        "model_version": version, "model_uri": f"models:/{RERANKER_MODEL}/{version}",
        "loss_curve": dg.MetadataValue.md(curve), **run_metadata(run),
    })  # fmt: skip
