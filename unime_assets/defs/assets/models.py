"""The pretrained base, the retriever and the judge checkpoints: a configured local checkpoint, or
(embedded default) a tiny backbone bootstrapped here: the base pretrained generatively, then the
retriever by in-batch InfoNCE from it, and the judges by Yes/No SFT, so that retrieval and judge
scores carry signal. One `judge_model/<name>` asset per judge of the profile."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from unime_assets.defs.assets._common import run_metadata, step_logger
from unime_assets.defs.assets.data import concat_partitions
from unime_assets.defs.metadata import figure, readable, table
from unime_assets.defs.partitions import JUDGES, judge_key
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.models.loading import check_checkpoint_dir
from unime_assets.tracking import plots


def _checkpoint_metadata(path) -> dict:
    from unime_assets.models.processors import checkpoint_config, text_config

    n_bytes = sum(f.stat().st_size for f in path.rglob("*.safetensors"))
    text = text_config(path)
    rows = [("model_type", checkpoint_config(path)["model_type"])]
    rows += [(k, str(text.get(k))) for k in ("hidden_size", "num_hidden_layers", "vocab_size")]
    config = table(rows, [("field", "string", "config.json field (text model)"), ("value", "string", "its value")])
    return {"path": dg.MetadataValue.path(str(path)), "safetensors_mb": round(n_bytes / 2**20, 2), "config": config}


@dg.asset(group_name="models", kinds={"pytorch", "deepspeed"},
          description="The pretrained MLLM the embedder (and, embedded, the retriever bootstrap) starts from "
          "(Qwen2-VL in the paper). Embedded default: the tiny Qwen2-VL pretrained generatively (chat SFT on "
          "image descriptions and visual questions of its own images), as a real MLLM has seen image-text data.")  # fmt: skip
def pretrained_base(context: dg.AssetExecutionContext, settings: SettingsResource,
                    mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.training.data import pretraining_examples
    from unime_assets.training.engine import EngineConfig
    from unime_assets.training.sft import train_sft

    s = settings.get()
    b = s.bootstrap
    with mlflow.run(context) as run:
        if not (b.enabled and b.pretrain_steps > 0):  # a configured pretrained checkpoint: validated only
            path = check_checkpoint_dir(s.embedder_base.path, "embedder base")
            run.log_params({"path": path, "pretrained_here": False})
            return dg.MaterializeResult(metadata={**_checkpoint_metadata(path), "pretrained_here": False,
                                                  **run_metadata(run)})  # fmt: skip
        if b.pretrain_corpus is None or not Path(b.pretrain_corpus).is_file():
            raise FileNotFoundError(f"bootstrap.pretrain_corpus {b.pretrain_corpus} is not a file: rebuild the "
                                    "embedded default (`unime-assets build-default`)")  # fmt: skip
        base = check_checkpoint_dir(s.embedder_base.path, "embedder base (tiny, random)")
        examples = pretraining_examples(b.pretrain_corpus)
        cfg = EngineConfig(micro_batch_size=b.pretrain_batch_size, total_steps=b.pretrain_steps, lr=b.pretrain_lr,
                           warmup_steps=b.pretrain_steps // 10, zero_stage=s.embedder.zero_stage)  # fmt: skip
        run.log_params({"base": base, "corpus": b.pretrain_corpus, "steps": b.pretrain_steps, "lr": b.pretrain_lr,
                        "batch_size": b.pretrain_batch_size, "examples": len(examples)})  # fmt: skip
        out = s.embedder_base_path
        # Generative pretraining is not a paper stage: answer + <|im_end|> supervised, like the judge bootstrap.
        result = train_sft(base, examples, Path(b.pretrain_corpus).parent, out, cfg, role="pretrain",
                           log=step_logger(context, run, b.pretrain_steps), label_mask="answer_eos")  # fmt: skip
        curve = figure(run, plots.loss_curve(result.losses, "generative pretraining (describe + VQA)"), "loss",
                       "loss_curve")  # fmt: skip
        return dg.MaterializeResult(metadata=readable({
            **_checkpoint_metadata(out), "pretrained_here": True, "examples": len(examples),
            "first_loss": result.losses[0], "final_loss": result.losses[-1], "train_seconds": round(result.seconds, 1),
            **curve, **run_metadata(run),
        }))  # fmt: skip


@dg.asset(group_name="models", kinds={"pytorch", "deepspeed"}, deps=["pretrained_base"],
          description="Stage-1 retriever (VLM2Vec in the paper). Embedded default: in-batch InfoNCE from the "
          "pretrained tiny base, with the embedder's budget (steps, batch, lr) and VLM2Vec's temperature (0.02).")  # fmt: skip
def retriever_model(context: dg.AssetExecutionContext, mmeb_train: dict[str, pl.DataFrame],
                    settings: SettingsResource, mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
    from unime_assets.training.data import retriever_pairs
    from unime_assets.training.embedder import train_retriever_infonce
    from unime_assets.training.engine import EngineConfig

    s = settings.get()
    train = concat_partitions(mmeb_train)
    with mlflow.run(context) as run:
        if not s.bootstrap.enabled:
            path = check_checkpoint_dir(s.retriever.path, "retriever")
            run.log_params({"path": path, "bootstrap": False})
            return dg.MaterializeResult(metadata=readable({**_checkpoint_metadata(path), **run_metadata(run)}))
        b = s.bootstrap
        # From the same pretrained base as the embedder (the paper: VLM2Vec and UniME-V2 both start from a
        # pretrained MLLM), so that the demo's "embedder vs retriever" compares the losses, not the starts.
        start = s.embedder_base_path if b.pretrain_steps > 0 else s.retriever.path
        base = check_checkpoint_dir(start, "retriever base")
        warmup = b.retriever_steps // 10 if b.retriever_warmup_steps is None else b.retriever_warmup_steps
        cfg = EngineConfig(micro_batch_size=b.retriever_batch_size, total_steps=b.retriever_steps,
                           lr=b.retriever_lr, warmup_steps=warmup, zero_stage=s.embedder.zero_stage)  # fmt: skip
        run.log_params({"base": base, "bootstrap": True, "steps": b.retriever_steps, "lr": b.retriever_lr,
                        "batch_size": b.retriever_batch_size, "warmup_steps": warmup,
                        "temperature": b.retriever_temperature})  # fmt: skip
        result = train_retriever_infonce(base, retriever_pairs(train), s.train_image_root, s.retriever_path,
                                         cfg, temperature=b.retriever_temperature, log=step_logger(context, run, b.retriever_steps))  # fmt: skip
        curve = figure(run, plots.loss_curve(result.losses, "retriever InfoNCE (bootstrap)"), "loss", "loss_curve")
        return dg.MaterializeResult(metadata=readable({
            **_checkpoint_metadata(s.retriever_path), "final_loss": result.losses[-1],
            "train_seconds": round(result.seconds, 1), **curve, **run_metadata(run),
        }))  # fmt: skip


def judge_model_asset(name: str) -> dg.AssetsDefinition:
    """`judge_model/<name>`: one configured judge (validated, or bootstrapped in the embedded default)
    with its held-out AUC, which `judge_ensemble`'s reliability-weighted rule reads."""

    @dg.asset(key=judge_key("judge_model", name), group_name="models", kinds={"pytorch", "deepspeed"},
              description=f"MLLM judge {name!r} (Qwen2.5-VL-7B in the paper; InternVL3 in its Table 5). Embedded "
              "default: a tiny model of the judge's family + Yes/No SFT. Reports the AUC of held-out positives vs "
              "random candidates.")  # fmt: skip
    def _judge_model(context: dg.AssetExecutionContext, mmeb_train: dict[str, pl.DataFrame],
                     mmeb_eval: dict[str, pl.DataFrame], settings: SettingsResource,
                     mlflow: MlflowResource) -> dg.MaterializeResult:  # fmt: skip
        s = settings.get()
        spec, path = s.judge_spec(name), s.judge_checkpoint(name)
        train, evals = concat_partitions(mmeb_train), concat_partitions(mmeb_eval)
        meta: dict = {}
        with mlflow.run(context) as run:
            if s.bootstrap.enabled:
                meta = _bootstrap_judge(context, run, mlflow.uri(), s, spec, train, path)
            else:
                check_checkpoint_dir(spec.path, f"judge {name}")
                run.log_params({"path": spec.path, "bootstrap": False})
            family = check_judge_family(spec, path)
            run.log_params({"judge": name, "family": family, "dtype": spec.dtype})
            aucs, held_out = _held_out_quality(run, s, spec, path, evals)
            context.log.info(f"judge {name} ({family}) held-out AUC: {aucs}")
        return dg.MaterializeResult(metadata=readable({
            **_checkpoint_metadata(path), "judge": name, "family": family,
            "held_out_auc": aucs.get("IND", float("nan")), "held_out_auc_ood": aucs.get("OOD", float("nan")),
            **held_out, **meta, **run_metadata(run),
        }))  # fmt: skip

    return _judge_model


def check_judge_family(spec, path) -> str:
    """The checkpoint's family; a configured family other than the checkpoint's is an error."""
    from unime_assets.models.families import family_of

    family = family_of(path).model_type
    if spec.family not in ("auto", family):
        raise ValueError(f"judge {spec.name!r}: configured family {spec.family!r} but {path}/config.json is {family!r}")
    return family


def _bootstrap_judge(context, run, tracking_uri: str, s, spec, train: pl.DataFrame, out) -> dict:
    """Embedded default only: the same chat SFT (Yes/No judgements + generative answers) for every judge,
    through the training launcher (`bootstrap.judge_processes` torchrun ranks, Dagster Pipes), as the
    reranker trains. The stand-in judge keeps its own recipe: answer + <|im_end|> supervised, native
    images, seed 0, ZeRO stage of the reranker."""
    from unime_assets.defs.assets.training import launch_data_path, launch_training
    from unime_assets.training.launch import TrainSpec

    b = s.bootstrap
    base = check_checkpoint_dir(spec.path, f"judge {spec.name} base")
    spec_ = TrainSpec(task="judge", base_path=str(base), training_set=str(launch_data_path(context, s)),
                      image_root=str(s.train_image_root), out_dir=str(out), steps=b.judge_steps,
                      batch_size=b.judge_batch_size, lr=b.judge_lr, warmup_steps=b.judge_steps // 10,
                      zero_stage=s.reranker.zero_stage, seed=0, label_mask="answer_eos",
                      trust_remote_code=spec.trust_remote_code, mlflow_tracking_uri=tracking_uri, mlflow_run_id=run.run_id,
                      log_every=max(1, b.judge_steps // 10), torch_threads=s.torch_threads)  # fmt: skip
    run.log_params({"base": base, "bootstrap": True, "steps": b.judge_steps, "lr": b.judge_lr,
                    "batch_size": b.judge_batch_size, "pairs": train.height})  # fmt: skip
    result, reported = launch_training(context, spec_, train, run, processes=b.judge_processes, launcher="torchrun")
    curve = figure(run, plots.loss_curve(result["losses"], f"judge SFT ({spec.name})"), "loss", "loss_curve")
    return {"final_loss": result["losses"][-1], "train_seconds": round(result["seconds"], 1),
            "processes": result["world_size"], "reused_weights": reported.get("reused_weights", False), **curve}


def _held_out_quality(run, s, spec, path, evals: pl.DataFrame) -> tuple[dict[str, float], dict]:
    """Held-out check on eval rows (never trained on): (query, ground truth) vs (query, random other
    candidate of its row). IND subsets are the trained tasks; OOD ones are reported beside them."""
    from sklearn.metrics import roc_auc_score

    from unime_assets.judging import held_out_pairs, score_pairs
    from unime_assets.models.encoding import ImageLoader
    from unime_assets.models.loading import load_model

    lm = load_model(path, role="judge", dtype=spec.dtype)  # trust_remote_code as configured, like every loader
    images = ImageLoader(s.eval_image_root, s.evaluation.image_size)
    info = s.eval_catalog
    aucs, hist, n_pairs, pos_mean = {}, {}, 0, float("nan")
    for split in ("IND", "OOD"):
        rows = evals.filter(pl.col("subset").is_in([n for n in info if info[n].split == split]))
        pairs, labels = held_out_pairs(rows, max_rows=400)
        if len(set(labels.tolist())) < 2:
            continue
        scores = score_pairs(lm.model, lm.processor, pairs, images, batch_size=s.judging.batch_size)
        aucs[split] = float(roc_auc_score(labels, scores))
        if split == "IND":
            pos_mean = float(np.mean(scores[labels == 1]))
            fig = plots.histograms({"ground truth": scores[labels == 1], "random candidate": scores[labels == 0]},
                                   f"judge {spec.name}: held-out IND eval pairs")  # fmt: skip
            hist = figure(run, fig, "held_out", "held_out_hist")
            n_pairs = len(labels)
    run.log_metrics({f"held_out_auc_{k.lower()}": v for k, v in aucs.items()})
    return aucs, {"held_out_pairs": n_pairs, "held_out_pos_mean": pos_mean, **hist}


judge_models = [judge_model_asset(name) for name in JUDGES]
