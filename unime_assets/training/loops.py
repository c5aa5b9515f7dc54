"""The training loops: embedder (judge-score alignment, InfoNCE ablations) and chat SFT.

Each loop loads a local checkpoint, wraps it in a DeepSpeed engine (ZeRO stage from config),
runs a fixed number of optimizer steps and writes a HF checkpoint (safetensors) atomically.
The same code runs in one process or as one rank of a `torchrun`/`deepspeed` launch
(training/launch.py): every optimizer step consumes one *global* batch from a seeded order, and
rank r takes its slice, so the data seen per step does not depend on the number of ranks.

Resumption: with a `CheckpointPolicy`, DeepSpeed checkpoints (weights, optimizer, scheduler,
step, losses so far) go to `<out_dir>/checkpoints/` every N steps. A run with the same
fingerprint resumes from the latest one; the data order is replayed up to that step and the RNG
is reseeded from (seed, step) at every step, so a resumed run sees what an uninterrupted one does.
Per-step metrics go to a callback on rank 0 (MLflow / Dagster Pipes upstream).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unime_assets.config import LoraConfig
from unime_assets.io import atomic_dir, atomic_path
from unime_assets.losses import info_nce_loss, judge_alignment_loss
from unime_assets.models.encoding import ImageLoader, Item, embed_inputs, forward_embeddings
from unime_assets.models.loading import load_model
from unime_assets.reranking import SFTExample, sft_batch
from unime_assets.training.engine import (
    EngineConfig,
    all_reduce_mean,
    barrier,
    export_pretrained,
    gather_with_grad,
    initialize,
    local_device,
    rank,
    world_size,
)
from unime_assets.training.gradcache import backward_count, full_batch_step, gradcache_step

StepLogger = Callable[[int, dict[str, float]], None]

FAIL_AFTER_STEP_ENV = "UNIME_TRAIN_FAIL_AFTER_STEP"  # fault injection for the resume tests
RESULT_FILE = "train_result.json"
CHECKPOINTS = "checkpoints"
EMBEDDER_LOSSES = ("judge_kl", "infonce_mined", "infonce_inbatch")


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


def _maybe_lora(model, lora: LoraConfig):
    if not lora.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_dora=lora.use_dora,
        target_modules=list(lora.target_modules), init_lora_weights="gaussian",
    )  # fmt: skip
    return get_peft_model(model, cfg)


def _check_rank_balance(model, cfg: EngineConfig) -> None:
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


def _backward(engine) -> Callable[[torch.Tensor], None]:
    """One DeepSpeed micro-step: the caller already scaled for accumulation, hence scale_wrt_gas=False;
    DeepSpeed applies the optimizer only at the accumulation boundary."""

    def run(loss: torch.Tensor) -> None:
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()

    return run


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


# ---------------------------------------------------------------------------------------------
# checkpoints


def _fingerprint(policy: CheckpointPolicy, cfg: EngineConfig, extra: dict) -> str:
    payload = {"user": policy.fingerprint, "engine": asdict(cfg), "world_size": world_size(), **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        path, state = engine.load_checkpoint(str(ckpt_dir))
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
    state = {"step": step, "history": history}
    engine.save_checkpoint(str(ckpt_dir), tag=f"step{step:08d}", client_state=state)
    barrier()
    if rank() == 0:  # `latest` already points at the new tag; older ones beyond `keep` go
        tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
        for old in tags[: max(0, len(tags) - keep)]:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the shared loop


MicroStep = Callable[[list[int]], tuple[float, dict[str, float]]]


def _run(
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
    bar = tqdm(range(start, cfg.total_steps), desc=desc, leave=False, disable=me != 0)
    for step in bar:
        torch.manual_seed(_step_seed(seed, step))
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
        lr = float(engine.get_lr()[0])
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


def _result(history: History, t0: float, out_dir: Path, start: int) -> TrainResult:
    return TrainResult(history["loss"], time.time() - t0, out_dir, start, world_size(), history)


def _finish(
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
# embedder


@dataclass
class EmbedderExample:
    query: Item
    candidates: list[Item]  # positive first, then hard negatives
    scores: list[float]  # judge scores aligned with candidates


def embedder_loss(
    q: torch.Tensor,
    c: torch.Tensor,
    scores: torch.Tensor,
    mode: str,
    temperature: float,
    *,
    pos_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (B, D), c (B, C, D) normalised, positive at c[:, 0]. `judge_kl` is the paper's loss; the
    others are the Table 4 ablations. `pos_keys` (B,) identifies each positive: in-batch InfoNCE
    does not count another query's identical positive (same class label) as a negative."""
    if mode == "judge_kl":
        return judge_alignment_loss(torch.einsum("bd,bkd->bk", q, c), scores, temperature=temperature)
    if mode == "infonce_mined":  # hard negatives, hard labels
        return info_nce_loss(q, c, temperature)
    if mode == "infonce_inbatch":  # positives of the other queries only, no mined negatives
        same = None if pos_keys is None else pos_keys[:, None] == pos_keys[None, :]
        return info_nce_loss(q, c[:, 0], temperature, duplicate_mask=same)
    raise ValueError(f"unknown embedder loss mode {mode!r}")


def _item_key(item: Item) -> int:
    digest = hashlib.blake2b(f"{item.text}\0{item.image}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def train_embedder(
    base_path: str | Path,
    examples: Sequence[EmbedderExample],
    image_root: str | Path,
    out_dir: str | Path,
    engine_cfg: EngineConfig,
    *,
    mode: str = "judge_kl",
    temperature: float = 0.02,
    lora: LoraConfig | None = None,
    seed: int = 0,
    log: StepLogger | None = None,
    gradcache_chunk: int = 0,
    checkpoint: CheckpointPolicy | None = None,
) -> TrainResult:
    """`engine_cfg.micro_batch_size` is per rank (the global batch is that times the world size).

    Per query the loss sees [positive, k negatives]; under several ranks the representations and
    scores are gathered so the loss is the global batch's, times the world size (DeepSpeed averages
    gradients over ranks). `gradcache_chunk` > 0 encodes that many sequences at a time (GradCache).
    """
    if not examples:
        raise ValueError("train_embedder: no training examples")
    if mode not in EMBEDDER_LOSSES:
        raise ValueError(f"unknown embedder loss mode {mode!r}; expected one of {EMBEDDER_LOSSES}")
    if len({len(e.candidates) for e in examples} | {len(e.scores) for e in examples}) != 1:
        raise ValueError("train_embedder: every example needs the same number of candidates and scores")
    lora = lora or LoraConfig(enabled=False)
    torch.manual_seed(seed)
    device = local_device()
    lm = load_model(base_path, role="embedder base", dtype=torch.float32, train=True, device=device)
    model = _maybe_lora(lm.model, lora)
    _check_rank_balance(model, engine_cfg)
    # In-batch InfoNCE never looks at the mined negatives: only positives are encoded.
    n_cands = 1 if mode == "infonce_inbatch" else len(examples[0].candidates)
    sizes = [engine_cfg.micro_batch_size, engine_cfg.micro_batch_size * n_cands]
    engine = initialize(model, engine_cfg, backward_count(sizes, gradcache_chunk))
    images = ImageLoader(image_root)
    backward = _backward(engine)
    scale = world_size() / engine_cfg.grad_accum

    def micro_step(ids: list[int]) -> tuple[float, dict[str, float]]:
        batch = [examples[i] for i in ids]
        groups = [[b.query for b in batch], [c for b in batch for c in b.candidates[:n_cands]]]

        def encode(g: int, start: int, stop: int) -> torch.Tensor:
            inputs = embed_inputs(groups[g][start:stop], lm.processor, images, lm.image_token).to(device)
            return forward_embeddings(engine, inputs)

        scores = torch.tensor([b.scores[:n_cands] for b in batch], dtype=torch.float32, device=device)
        keys = torch.tensor([_item_key(b.candidates[0]) for b in batch], dtype=torch.int64, device=device)

        def loss_fn(reps: list[torch.Tensor]) -> torch.Tensor:
            q, c = gather_with_grad(reps[0]), gather_with_grad(reps[1])
            c = c.view(q.shape[0], n_cands, q.shape[-1])
            return embedder_loss(q, c, gather_with_grad(scores), mode, temperature,
                                 pos_keys=gather_with_grad(keys))  # fmt: skip

        if gradcache_chunk > 0:
            loss, (q, c) = gradcache_step(encode, sizes, gradcache_chunk, loss_fn, backward, scale)
        else:
            loss, (q, c) = full_batch_step(encode, sizes, loss_fn, backward, scale)
        pos_sim = float(torch.einsum("bd,bd->b", q, c.view(len(batch), n_cands, -1)[:, 0]).mean())
        return float(loss), {"pos_sim": all_reduce_mean(pos_sim)}

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINTS if checkpoint is not None else None
    fp = _fingerprint(checkpoint or CheckpointPolicy(), engine_cfg, {
        "task": "embedder", "base": str(base_path), "mode": mode, "temperature": temperature,
        "lora": lora.model_dump(), "seed": seed, "n": len(examples),
        "gradcache": gradcache_chunk})  # fmt: skip
    t0 = time.time()
    history, start = _run(engine, engine_cfg, len(examples), micro_step, log, "embedder", seed=seed,
                          ckpt_dir=ckpt_dir, policy=checkpoint, fingerprint=fp)  # fmt: skip
    result = _result(history, t0, out_dir, start)
    _finish(engine, out_dir, lm.processor, engine_cfg, lora.enabled, result, ckpt_dir)
    return result


# ---------------------------------------------------------------------------------------------
# retriever bootstrap and chat SFT


def train_retriever_infonce(
    base_path: str | Path,
    pairs: Sequence[tuple[Item, Item]],
    image_root: str | Path,
    out_dir: str | Path,
    engine_cfg: EngineConfig,
    *,
    temperature: float = 0.05,
    seed: int = 0,
    log: StepLogger | None = None,
) -> TrainResult:
    """Embedded default only: make the tiny retriever a (weak) VLM2Vec-like embedder with in-batch InfoNCE."""
    device = local_device()
    lm = load_model(base_path, role="retriever base", dtype=torch.float32, train=True, device=device)
    torch.manual_seed(seed)
    engine = initialize(lm.model, engine_cfg)
    images = ImageLoader(image_root)
    backward = _backward(engine)

    def micro_step(ids: list[int]) -> tuple[float, dict[str, float]]:
        qs, ps = [pairs[i][0] for i in ids], [pairs[i][1] for i in ids]
        q = forward_embeddings(engine, embed_inputs(qs, lm.processor, images, lm.image_token).to(device))
        p = forward_embeddings(engine, embed_inputs(ps, lm.processor, images, lm.image_token).to(device))
        same = torch.tensor([[a == b for b in ps] for a in ps], device=device)
        loss = info_nce_loss(q, p, temperature, duplicate_mask=same)
        backward(loss / engine_cfg.grad_accum)
        return all_reduce_mean(float(loss.detach())), {}

    t0 = time.time()
    history, start = _run(engine, engine_cfg, len(pairs), micro_step, log, "retriever", seed=seed)
    out_dir = Path(out_dir)
    result = _result(history, t0, out_dir, start)
    _finish(engine, out_dir, lm.processor, engine_cfg, False, result, None)
    return result


def train_sft(
    base_path: str | Path,
    examples: Sequence[SFTExample],
    image_root: str | Path,
    out_dir: str | Path,
    engine_cfg: EngineConfig,
    *,
    role: str,
    lora: LoraConfig | None = None,
    seed: int = 0,
    log: StepLogger | None = None,
    checkpoint: CheckpointPolicy | None = None,
) -> TrainResult:
    """Chat SFT with the loss on assistant tokens only: the reranker, and the tiny judge's bootstrap.

    Under several ranks each rank's loss is its own micro-batch's token mean (DeepSpeed averages
    the gradients); the logged loss is the mean over ranks."""
    if not examples:
        raise ValueError(f"train_sft ({role}): no examples")
    lora = lora or LoraConfig(enabled=False)
    device = local_device()
    lm = load_model(base_path, role=role, dtype=torch.float32, train=True, device=device)
    torch.manual_seed(seed)
    model = _maybe_lora(lm.model, lora)
    _check_rank_balance(model, engine_cfg)
    engine = initialize(model, engine_cfg)
    images = ImageLoader(image_root)
    backward = _backward(engine)

    def micro_step(ids: list[int]) -> tuple[float, dict[str, float]]:
        batch = sft_batch(lm.processor, [examples[i] for i in ids], images).to(device)
        loss = engine(**batch, use_cache=False).loss
        backward(loss / engine_cfg.grad_accum)
        return all_reduce_mean(float(loss.detach())), {}

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINTS if checkpoint is not None else None
    fp = _fingerprint(checkpoint or CheckpointPolicy(), engine_cfg, {
        "task": role, "base": str(base_path), "lora": lora.model_dump(), "seed": seed,
        "n": len(examples)})  # fmt: skip
    t0 = time.time()
    history, start = _run(engine, engine_cfg, len(examples), micro_step, log, role, seed=seed,
                          ckpt_dir=ckpt_dir, policy=checkpoint, fingerprint=fp)  # fmt: skip
    result = _result(history, t0, out_dir, start)
    _finish(engine, out_dir, lm.processor, engine_cfg, lora.enabled, result, ckpt_dir)
    return result
