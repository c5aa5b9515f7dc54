"""The training loops: embedder (judge-score alignment, InfoNCE ablations) and chat SFT.

Each loop loads a local checkpoint, wraps it in a DeepSpeed engine (ZeRO stage from config),
runs a fixed number of optimizer steps with seeded batch order and writes a HF checkpoint
(safetensors) atomically. Per-step metrics go to a callback (MLflow / Dagster log upstream).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unime_assets.config import LoraConfig
from unime_assets.io import atomic_dir
from unime_assets.losses import info_nce_loss, judge_alignment_loss
from unime_assets.models.encoding import ImageLoader, Item, embed_inputs, forward_embeddings
from unime_assets.models.loading import load_model
from unime_assets.reranking import SFTExample, sft_batch
from unime_assets.training.engine import EngineConfig, export_pretrained, initialize

StepLogger = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    losses: list[float]
    seconds: float
    out_dir: Path


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


def _batches(n_items: int, batch_size: int, n_batches: int, seed: int):
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


def _run(engine, cfg: EngineConfig, batch_ids, loss_fn, log: StepLogger | None, desc: str) -> list[float]:
    losses = []
    bar = tqdm(range(cfg.total_steps), desc=desc, leave=False)
    for step in bar:
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            loss, metrics = loss_fn(next(batch_ids))
            engine.backward(loss)
            engine.step()
            step_loss += float(loss.detach()) / cfg.grad_accum
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"{desc}: loss became {step_loss} at step {step}")
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if log is not None:
            log(step, {"loss": step_loss, "lr": float(engine.get_lr()[0]), **metrics})
    return losses


@dataclass
class EmbedderExample:
    query: Item
    candidates: list[Item]  # positive first, then hard negatives
    scores: list[float]  # judge scores aligned with candidates


def embedder_loss(q: torch.Tensor, c: torch.Tensor, scores: torch.Tensor, mode: str, temperature: float):
    """q (B, D), c (B, 1+k, D) normalised. `judge_kl` is the paper's loss; the others are Table 4 ablations."""
    if mode == "judge_kl":
        return judge_alignment_loss(torch.einsum("bd,bkd->bk", q, c), scores, temperature=temperature)
    if mode == "infonce_mined":  # hard negatives, hard labels
        return info_nce_loss(q, c, temperature)
    if mode == "infonce_inbatch":  # positives of the other queries only, no mined negatives
        return info_nce_loss(q, c[:, 0], temperature)
    raise ValueError(f"unknown embedder loss mode {mode!r}")


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
) -> TrainResult:
    if not examples:
        raise ValueError("train_embedder: no training examples")
    lora = lora or LoraConfig(enabled=False)
    torch.manual_seed(seed)
    lm = load_model(base_path, role="embedder base", dtype=torch.float32, train=True)
    model = _maybe_lora(lm.model, lora)
    engine = initialize(model, engine_cfg)
    images = ImageLoader(image_root)
    device = engine.device

    def loss_fn(ids: list[int]):
        batch = [examples[i] for i in ids]
        q_in = embed_inputs([b.query for b in batch], lm.processor, images, lm.image_token).to(device)
        c_items = [c for b in batch for c in b.candidates]
        c_in = embed_inputs(c_items, lm.processor, images, lm.image_token).to(device)
        q = forward_embeddings(engine, q_in)
        c = forward_embeddings(engine, c_in).view(len(batch), -1, q.shape[-1])
        scores = torch.tensor([b.scores for b in batch], dtype=torch.float32, device=device)
        loss = embedder_loss(q, c, scores, mode, temperature)
        return loss, {"pos_sim": float(torch.einsum("bd,bd->b", q, c[:, 0]).mean())}

    t0 = time.time()
    losses = _run(engine, engine_cfg, _batches(len(examples), engine_cfg.micro_batch_size,
                                                engine_cfg.total_steps * engine_cfg.grad_accum, seed),
                  loss_fn, log, "embedder")  # fmt: skip
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        export_pretrained(engine, tmp, lm.processor, zero_stage=engine_cfg.zero_stage, lora=lora.enabled)
    return TrainResult(losses, time.time() - t0, out_dir)


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
    lm = load_model(base_path, role="retriever base", dtype=torch.float32, train=True)
    torch.manual_seed(seed)
    engine = initialize(lm.model, engine_cfg)
    images = ImageLoader(image_root)
    device = engine.device

    def loss_fn(ids: list[int]):
        qs, ps = [pairs[i][0] for i in ids], [pairs[i][1] for i in ids]
        q = forward_embeddings(engine, embed_inputs(qs, lm.processor, images, lm.image_token).to(device))
        p = forward_embeddings(engine, embed_inputs(ps, lm.processor, images, lm.image_token).to(device))
        same = torch.tensor([[a == b for b in ps] for a in ps], device=device)
        return info_nce_loss(q, p, temperature, duplicate_mask=same), {}

    t0 = time.time()
    batches = _batches(len(pairs), engine_cfg.micro_batch_size, engine_cfg.total_steps * engine_cfg.grad_accum, seed)
    losses = _run(engine, engine_cfg, batches, loss_fn, log, "retriever")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        export_pretrained(engine, tmp, lm.processor, zero_stage=engine_cfg.zero_stage, lora=False)
    return TrainResult(losses, time.time() - t0, out_dir)


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
) -> TrainResult:
    """Chat SFT with the loss on assistant tokens only: the reranker, and the tiny judge's bootstrap."""
    if not examples:
        raise ValueError(f"train_sft ({role}): no examples")
    lora = lora or LoraConfig(enabled=False)
    lm = load_model(base_path, role=role, dtype=torch.float32, train=True)
    torch.manual_seed(seed)
    model = _maybe_lora(lm.model, lora)
    engine = initialize(model, engine_cfg)
    images = ImageLoader(image_root)
    device = engine.device

    def loss_fn(ids: list[int]):
        batch = sft_batch(lm.processor, [examples[i] for i in ids], images).to(device)
        return engine(**batch, use_cache=False).loss, {}

    t0 = time.time()
    batches = _batches(len(examples), engine_cfg.micro_batch_size, engine_cfg.total_steps * engine_cfg.grad_accum, seed)
    losses = _run(engine, engine_cfg, batches, loss_fn, log, role)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        export_pretrained(engine, tmp, lm.processor, zero_stage=engine_cfg.zero_stage, lora=lora.enabled)
    return TrainResult(losses, time.time() - t0, out_dir)
