"""The shared training loop on a DeepSpeed engine: seeded data order, resumable checkpoints, export.

Each trainer (training/embedder.py, training/sft.py) loads a local checkpoint, wraps it in a
DeepSpeed engine (ZeRO stage from config), runs a fixed number of optimizer steps through
`run_steps` and writes a HF checkpoint (safetensors) atomically with `finish`. The same code runs in
one process or as one rank of a `torchrun`/`deepspeed` launch (training/launch.py): every optimizer
step consumes one *global* batch from a seeded order, and rank r takes its slice, so the data seen
per step does not depend on the number of ranks.

Resumption: with a `CheckpointPolicy`, DeepSpeed checkpoints (weights, optimizer, scheduler,
step, losses so far) go to `<out_dir>/checkpoints/` every N steps; they are read back weights-only
(training/resume_states.py), so a file planted there cannot run code. A run with the same
fingerprint (data, hyper-parameters, the base checkpoint's content) resumes from the latest one every
rank finished writing; the data order is replayed up to that step and the RNG is reseeded from
(seed, step) at every step, so a resumed run sees what an uninterrupted one does.
Per-step metrics go to a callback on rank 0 (MLflow / Dagster Pipes upstream).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unime_assets.config import LoraConfig
from unime_assets.fingerprints import checkpoint_fingerprint, hash_fields
from unime_assets.io import atomic_dir, atomic_path
from unime_assets.models.encoding import ImageLoader
from unime_assets.models.loading import load_model
from unime_assets.quiet import bar_disabled
from unime_assets.training import resume_states
from unime_assets.training.engine import (
    EngineConfig,
    barrier,
    export_pretrained,
    initialize,
    local_device,
    rank,
    world_size,
)

StepLogger = Callable[[int, dict[str, float]], None]

FAIL_AFTER_STEP_ENV = "UNIME_TRAIN_FAIL_AFTER_STEP"  # fault injection for the resume tests
RESULT_FILE = "train_result.json"
CHECKPOINTS = "checkpoints"


class InjectedFailure(RuntimeError):
    pass


@dataclass
class TrainResult:
    losses: list[float]
    seconds: float
    out_dir: Path
    resumed_from: int = 0  # optimizer step the run started from (0: fresh)
    world_size: int = 1
    metrics: dict[str, list[float]] = field(default_factory=dict)  # per-step lr, grad_norm, ... (every step)


@dataclass
class CheckpointPolicy:
    every: int = 0  # optimizer steps between DeepSpeed checkpoints; 0: none (resume still honoured)
    keep: int = 2  # most recent checkpoints kept
    fingerprint: str = ""  # what the run trains on (data hash, hyper-parameters); must match to resume


def maybe_lora(model, lora: LoraConfig):
    if not lora.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_dora=lora.use_dora,
        target_modules=list(lora.target_modules), exclude_modules=lora.exclude_modules,
        init_lora_weights="gaussian",
    )  # fmt: skip
    return get_peft_model(model, cfg)


def check_rank_balance(model, cfg: EngineConfig) -> None:
    """ZeRO 1-3 reduce each gradient as it becomes ready, so every rank must produce gradients for
    the same parameters in the same order. A trainable vision tower breaks that: a rank whose
    micro-batch (or GradCache chunk) holds no image has no vision gradients and the ranks'
    collectives diverge (gloo: "Received data size doesn't match expected size"). ZeRO-0 reduces all
    gradients at once (missing ones as zeros) and LoRA on the language model (the official
    targets) leaves the vision tower frozen; both are fine."""
    if world_size() == 1 or cfg.zero_stage == 0:
        return
    vision = [n for n, p in model.named_parameters() if p.requires_grad and ("visual" in n or "vision" in n)]
    if vision:
        raise ValueError(
            f"{len(vision)} trainable vision-tower parameters (e.g. {vision[0]}) with ZeRO-{cfg.zero_stage} "
            f"on {world_size()} processes: use zero_stage 0 for full fine-tuning on several processes, "
            "or LoRA targets that leave the vision tower frozen"
        )


def _batches(n_items: int, batch_size: int, n_batches: int, seed: int) -> Iterator[list[int]]:
    """Seeded epoch-wise shuffles: the same seed gives the same data order (needed for resume)."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(n_batches):
        if len(order) < batch_size:
            perm = list(range(n_items))
            rng.shuffle(perm)
            order += perm
        yield order[:batch_size]
        order = order[batch_size:]


def _step_seed(seed: int, step: int) -> int:
    # Dropout and other torch randomness restart from (seed, step): identical after a resume.
    return (seed * 1_000_003 + step) % (2**63 - 1)


# Gradient norms DeepSpeed does not keep: fp32 without ZeRO clips (`clip_fp32_gradients`) but stores none.
_OWN_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _norm_kept_by_deepspeed(engine) -> bool:
    return bool(engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled())


def make_backward(engine) -> Callable[[torch.Tensor], None]:
    """One DeepSpeed micro-step: the caller already scaled for accumulation, hence scale_wrt_gas=False;
    DeepSpeed applies the optimizer only at the accumulation boundary. Where DeepSpeed keeps no
    gradient norm (fp32, ZeRO-0), the boundary's pre-clipping norm is taken here, after DeepSpeed's
    all-reduce, so every rank logs the global one."""
    own_norm = not _norm_kept_by_deepspeed(engine)

    def run(loss: torch.Tensor) -> None:
        engine.backward(loss, scale_wrt_gas=False)
        if own_norm and engine.is_gradient_accumulation_boundary():
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            _OWN_NORMS[engine] = float(torch.nn.utils.get_total_norm(grads)) if grads else float("nan")
        engine.step()

    return run


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    if norm is None:
        norm = _OWN_NORMS.get(engine)
    return float(norm) if norm is not None else float("nan")


# ---------------------------------------------------------------------------------------------
# checkpoints


def base_identity(base_path: str | os.PathLike) -> dict[str, str]:
    """The base a run starts from, for its resume fingerprint: the path and the checkpoint's content, so
    a base replaced at the same path (a re-materialized `pretrained_base`, an updated checkpoint)
    starts a clean run instead of restoring states trained from the old one."""
    return {"base": str(base_path), "base_fingerprint": checkpoint_fingerprint(base_path)}


def run_fingerprint(policy: CheckpointPolicy, cfg: EngineConfig, extra: dict) -> str:
    payload = {"user": policy.fingerprint, "engine": asdict(cfg), "world_size": world_size(), **extra}
    return hash_fields("train-run", json.dumps(payload, sort_keys=True, default=str))[:16]


History = dict[str, list[float]]


def _resume(engine, ckpt_dir: Path, fingerprint: str) -> tuple[int, History]:
    """Load the latest checkpoint written under the same fingerprint; otherwise start clean."""
    meta = ckpt_dir / "fingerprint.json"
    usable = (
        meta.is_file()
        and json.loads(meta.read_text()).get("fingerprint") == fingerprint
        and not (ckpt_dir / "complete").exists()  # a finished run is not resumed: retrain from scratch
        and (ckpt_dir / "latest").is_file()
    )
    if usable:
        path, state = resume_states.load_checkpoint(engine, ckpt_dir)  # weights-only: no code from the files
        if path is not None and state:
            return int(state["step"]), {k: [float(x) for x in v] for k, v in state["history"].items()}
    barrier()  # every rank decided before rank 0 clears the directory
    if rank() == 0:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        ckpt_dir.mkdir(parents=True)
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({"fingerprint": fingerprint}))
    barrier()
    return 0, {}


def _save(engine, ckpt_dir: Path, step: int, history: History, keep: int) -> None:
    state, tag = {"step": step, "history": history}, f"step{step:08d}"
    # DeepSpeed's rank 0 writes `latest` before the closing barrier, while other ranks may still be
    # writing their files: a kill then leaves `latest` naming a step no resume can load. We commit the
    # tag ourselves once every rank has finished (`latest` is what `load_checkpoint` reads).
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    barrier()
    if rank() == 0:  # commit, then drop the oldest tags beyond `keep`
        with atomic_path(ckpt_dir / "latest") as tmp:
            tmp.write_text(tag)
        tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
        for old in tags[: max(0, len(tags) - keep)]:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the shared loop


MicroStep = Callable[[list[int]], tuple[float, dict[str, float]]]


def run_steps(
    engine,
    cfg: EngineConfig,
    n_items: int,
    micro_step: MicroStep,
    log: StepLogger | None,
    desc: str,
    *,
    seed: int,
    ckpt_dir: Path | None = None,
    policy: CheckpointPolicy | None = None,
    fingerprint: str = "",
) -> tuple[History, int]:
    """Optimizer steps from the resume point; returns (per-step metrics of all steps, first step run here)."""
    world, me = world_size(), rank()
    per_rank = cfg.micro_batch_size
    start, history = _resume(engine, ckpt_dir, fingerprint) if ckpt_dir is not None else (0, {})
    batches = _batches(n_items, per_rank * world, cfg.total_steps * cfg.grad_accum, seed)
    for _ in range(start * cfg.grad_accum):  # replay the seeded order up to the resume point
        next(batches)
    fail_after = int(os.environ.get(FAIL_AFTER_STEP_ENV) or 0)
    bar = tqdm(range(start, cfg.total_steps), desc=desc, leave=False, disable=bar_disabled(me == 0))
    for step in bar:
        torch.manual_seed(_step_seed(seed, step))
        lr = float(engine.get_lr()[0])  # the rate this step's update uses (read before the scheduler steps)
        step_loss, metrics = 0.0, {}
        for _ in range(cfg.grad_accum):
            ids = next(batches)[me * per_rank : (me + 1) * per_rank]
            loss, m = micro_step(ids)
            step_loss += loss / cfg.grad_accum
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"{desc}: loss became {step_loss} at step {step}")
        bar.set_postfix(loss=f"{step_loss:.4f}")
        metrics = {"loss": step_loss, "lr": lr, "grad_norm": _grad_norm(engine), **metrics}
        for k, v in metrics.items():
            history.setdefault(k, []).append(v)
        if log is not None and me == 0:
            log(step, metrics)
        done = step + 1
        if ckpt_dir is not None and policy is not None and policy.every and done % policy.every == 0 \
                and done < cfg.total_steps:  # fmt: skip
            _save(engine, ckpt_dir, done, history, policy.keep)
        if fail_after and done == fail_after:
            raise InjectedFailure(f"{desc}: injected failure after step {done} (${FAIL_AFTER_STEP_ENV})")
    return history, start


def make_result(history: History, t0: float, out_dir: Path, start: int) -> TrainResult:
    return TrainResult(history["loss"], time.time() - t0, out_dir, start, world_size(), history)


def finish(
    engine, out_dir: Path, processor, cfg: EngineConfig, lora: bool, result: TrainResult,
    ckpt_dir: Path | None,
) -> None:  # fmt: skip
    """Rank 0 writes the final HF checkpoint (merged safetensors, plus the adapter when LoRA) in a
    temporary sibling and swaps it in whole; the checkpoints directory moves along, marked complete."""
    if rank() == 0:
        with atomic_dir(out_dir) as tmp:
            export_pretrained(engine, tmp, processor, zero_stage=cfg.zero_stage, lora=lora)
            summary = {"losses": result.losses, "seconds": result.seconds,
                       "resumed_from": result.resumed_from, "world_size": result.world_size,
                       "steps": cfg.total_steps, "metrics": result.metrics}  # fmt: skip
            (tmp / RESULT_FILE).write_text(json.dumps(summary))
            if ckpt_dir is not None and ckpt_dir.is_dir():
                (ckpt_dir / "complete").touch()
                os.replace(ckpt_dir, tmp / CHECKPOINTS)
    else:
        # Only the ZeRO-3 gather is collective; rank 0 writes.
        export_pretrained(engine, out_dir, processor, zero_stage=cfg.zero_stage, lora=lora)
    barrier()


def read_result(out_dir: str | Path) -> dict:
    """The summary a finished run wrote next to its weights (losses of every step, seconds, ...)."""
    return json.loads((Path(out_dir) / RESULT_FILE).read_text())


# ---------------------------------------------------------------------------------------------
# what every trainer does before and after its own micro-step


@dataclass
class Trainee:
    """A model ready to train: the loaded checkpoint, its DeepSpeed engine and what a micro-step needs."""

    lm: Any  # models.loading.LoadedModel (processor, image_token)
    engine: Any
    images: Callable[[str], Any]
    backward: Callable[[torch.Tensor], None]
    device: torch.device


def prepare(base_path: str | Path, role: str, engine_cfg: EngineConfig, image_root: str | Path, *,
            seed: int, lora: LoraConfig | None = None, backwards_per_micro_batch: int = 1,
            images: Callable[[str], Any] | None = None) -> Trainee:  # fmt: skip
    """Load the base on this rank's device in float32, seed, wrap in LoRA (when enabled) and DeepSpeed.
    `images` loads a relative image path (default: native resolution under image_root)."""
    device = local_device()
    lm = load_model(base_path, role=role, dtype=torch.float32, train=True, device=device)
    torch.manual_seed(seed)  # after loading: LoRA's init draws from here, whatever loading consumed
    model = maybe_lora(lm.model, lora or LoraConfig(enabled=False))
    check_rank_balance(model, engine_cfg)
    engine = initialize(model, engine_cfg, backwards_per_micro_batch)
    return Trainee(lm, engine, images or ImageLoader(image_root), make_backward(engine), device)


def train_and_export(trainee: Trainee, engine_cfg: EngineConfig, n_items: int, micro_step: MicroStep,
                     out_dir: str | Path, *, desc: str, seed: int, log: StepLogger | None,
                     lora: LoraConfig | None = None, checkpoint: CheckpointPolicy | None = None,
                     identity: dict | None = None) -> TrainResult:  # fmt: skip
    """Run every optimizer step (resuming when `checkpoint` allows) and write the final checkpoint.

    `identity` (task, base, hyper-parameters, data size) goes into the resume fingerprint: a resume
    state written under another one is never loaded."""
    lora = lora or LoraConfig(enabled=False)
    out = Path(out_dir)
    ckpt_dir = out / CHECKPOINTS if checkpoint is not None else None
    fp = run_fingerprint(checkpoint or CheckpointPolicy(), engine_cfg, {**(identity or {}), "seed": seed,
                                                                        "lora": lora.model_dump(), "n": n_items})  # fmt: skip
    t0 = time.time()
    history, start = run_steps(trainee.engine, engine_cfg, n_items, micro_step, log, desc, seed=seed,
                               ckpt_dir=ckpt_dir, policy=checkpoint, fingerprint=fp)  # fmt: skip
    result = make_result(history, t0, out, start)
    finish(trainee.engine, out, trainee.lm.processor, engine_cfg, lora.enabled, result, ckpt_dir)
    return result
