"""Chat SFT with the loss on assistant tokens only (stage 5): the reranker, and the tiny judge's bootstrap."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from unime_assets.config import LoraConfig
from unime_assets.models.encoding import ImageLoader
from unime_assets.reranking import MaxPixels, SFTExample, collate_sft, sft_batch
from unime_assets.training.engine import EngineConfig, all_reduce_mean
from unime_assets.training.loop import (
    CheckpointPolicy,
    StepLogger,
    TrainResult,
    base_identity,
    prepare,
    train_and_export,
)


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
    label_mask: str = "official",
    max_pixels: int | None = None,
) -> TrainResult:
    """Chat SFT with the loss on assistant tokens only: the reranker, and the tiny judge's bootstrap.

    `label_mask` chooses the supervised tokens (reranking.sft_batch); `max_pixels` caps every image
    as the official reranker collator does (reranking.MaxPixels; None: native resolution). The loss
    is HF's causal-LM token mean, with logits computed only where they predict a supervised token.
    Under several ranks each rank's loss is its own micro-batch's token mean (DeepSpeed averages
    the gradients); the logged loss is the mean over ranks."""
    if not examples:
        raise ValueError(f"train_sft ({role}): no examples")
    images = MaxPixels(ImageLoader(image_root), max_pixels) if max_pixels else None
    t = prepare(base_path, role, engine_cfg, image_root, seed=seed, lora=lora, images=images)
    draws = engine_cfg.total_steps * engine_cfg.grad_accum * engine_cfg.micro_batch_size  # on this rank
    batches = EncodedExamples(t.lm.processor, examples, t.images, label_mask,
                              budget_bytes=ENCODED_BUDGET_BYTES if draws > len(examples) else 0)  # fmt: skip

    def micro_step(ids: list[int]) -> tuple[float, dict[str, float]]:
        batch = batches(ids).to(t.device)
        loss = supervised_token_loss(t.engine, batch)
        t.backward(loss / engine_cfg.grad_accum)
        return all_reduce_mean(float(loss.detach())), {}

    identity = {"task": role, **base_identity(base_path), "label_mask": label_mask, "max_pixels": max_pixels}
    return train_and_export(t, engine_cfg, len(examples), micro_step, out_dir, desc=role, seed=seed, log=log,
                            lora=lora, checkpoint=checkpoint, identity=identity)


# What one rank keeps of encoded SFT examples (the embedded judge's 2,280: 236 MiB, mostly pixel values).
ENCODED_BUDGET_BYTES = 1 << 30


class EncodedExamples:
    """The batches of an SFT run: `sft_batch` of the drawn examples, each example encoded once.

    A run that draws its examples several times (the embedded judge sees each ~17 times) would re-run
    the chat template, the image processing and the tokenizer at every draw (10-13 % of a judge step on
    CPU). Each example is encoded alone (`sft_batch` of one) and kept while the encodings fit in
    `budget_bytes`; a batch is then padded and concatenated from them (reranking.collate_sft), which
    gives `sft_batch`'s tensors exactly (tests/training/test_sft_encoding.py). Budget 0: keep none and build
    each batch whole (a run that draws each example about once, as the official single reranker epoch does)."""

    def __init__(self, processor, examples: Sequence[SFTExample], images, label_mask: str, *,
                 budget_bytes: int) -> None:  # fmt: skip
        self.processor, self.examples, self.images, self.label_mask = processor, examples, images, label_mask
        self.budget, self.used = budget_bytes, 0
        self.kept: dict[int, dict[str, torch.Tensor]] = {}

    def _encode(self, i: int) -> dict[str, torch.Tensor]:
        enc = self.kept.get(i)
        if enc is None:
            enc = dict(sft_batch(self.processor, [self.examples[i]], self.images, self.label_mask))
            size = sum(v.numel() * v.element_size() for v in enc.values())
            if self.used + size <= self.budget:
                self.kept[i], self.used = enc, self.used + size
        return enc

    def __call__(self, ids: Sequence[int]):
        if not self.budget:  # nothing will be kept: one processor call for the batch is cheaper than one per example
            return sft_batch(self.processor, [self.examples[i] for i in ids], self.images, self.label_mask)
        tok = self.processor.tokenizer
        return collate_sft([self._encode(i) for i in ids], tok.pad_token_id, tok.padding_side)


def supervised_token_loss(model, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised tokens (labels != -100) of `batch`, with
    logits only at the positions that predict them: the causal-LM loss of HF's `labels=` path (which
    shifts the labels by one), without a vocabulary-wide logit tensor for every position (at
    Qwen2.5-VL's 152K vocabulary that tensor dominates the memory of long sequences)."""
    labels = batch["labels"]
    keep = (labels[:, 1:] != -100).any(0).nonzero().flatten()  # position p predicts token p + 1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    target = labels[:, keep + 1]
    summed = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum")
    return summed / int((target != -100).sum())
