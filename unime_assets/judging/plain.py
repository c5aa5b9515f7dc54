"""Plain transformers scoring: the one-pair-per-pass reference and the batched pairs engine.

`score_pairs_plain` is the reference every faster path is tested and benchmarked against;
`score_pairs` is what a practitioner would write with transformers (length-bucketed batches,
`logits_to_keep=1`); `BatchedPairsJudge` exposes it as a judge engine (no prefix sharing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unime_assets.judging.prompt import (
    PAIRWISE_PROMPT,
    judge_score_from_logits,
    pair_images,
    pairwise_messages,
    yes_no_token_ids,
)
from unime_assets.models.encoding import Item
from unime_assets.quiet import bar_disabled


@torch.inference_mode()
def score_pairs_plain(
    model, processor, pairs: Sequence[tuple[Item, Item]], images: Callable[[str], Image.Image],
    *, prompt: str = PAIRWISE_PROMPT,
) -> np.ndarray:  # fmt: skip
    """The reference: each pair alone, one full forward pass with full logits, no cache, no tricks.

    Slow by design; the optimized paths are tested and benchmarked against it.
    """
    yes_id, no_id = yes_no_token_ids(processor.tokenizer)
    device = next(model.parameters()).device
    out = np.zeros(len(pairs), dtype=np.float64)
    for i, (q, c) in enumerate(pairs):
        text = processor.apply_chat_template(
            pairwise_messages(q, c, prompt), tokenize=False, add_generation_prompt=True
        )
        imgs = pair_images([(q, c)], images)
        inputs = processor(text=[text], images=imgs or None, return_tensors="pt")
        logits = model(**inputs.to(device), use_cache=False).logits[0, -1].float()
        out[i] = float(judge_score_from_logits(logits[yes_id], logits[no_id]))
    return out


@torch.inference_mode()
def score_pairs(
    model,
    processor,
    pairs: Sequence[tuple[Item, Item]],
    images: Callable[[str], Image.Image],
    *,
    batch_size: int = 32,
    prompt: str = PAIRWISE_PROMPT,
    desc: str = "judge",
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Judge score per (query, candidate) pair, batched and length-bucketed; output keeps input order."""
    yes_id, no_id = yes_no_token_ids(processor.tokenizer)
    device = next(model.parameters()).device
    prompts = [
        processor.apply_chat_template(
            pairwise_messages(q, c, prompt), tokenize=False, add_generation_prompt=True
        )
        for q, c in pairs
    ]
    # length buckets; the image count is family-neutral (placeholders differ between families)
    order = sorted(range(len(pairs)), key=lambda i: (len(prompts[i]), bool(pairs[i][0].image) + bool(pairs[i][1].image)))
    scores = np.zeros(len(pairs), dtype=np.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=bar_disabled(progress), leave=False):
        idx = order[start : start + batch_size]
        imgs = pair_images([pairs[i] for i in idx], images)
        inputs = processor(
            text=[prompts[i] for i in idx], images=imgs or None, return_tensors="pt", padding=True
        )
        # Left padding: position -1 is where the first answer token is predicted; keep only it.
        logits = model(**inputs.to(device), logits_to_keep=1, use_cache=False).logits[:, -1].float()
        scores[idx] = judge_score_from_logits(logits[:, yes_id], logits[:, no_id]).double().cpu().numpy()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    return scores


class BatchedPairsJudge:
    """Groups flattened into pairs for `score_pairs` (no prefix sharing): the simpler fallback."""

    def __init__(self, model, processor, images: Callable[[str], Image.Image], *, batch_size: int = 32,
                 prompt: str = PAIRWISE_PROMPT) -> None:  # fmt: skip
        self.model, self.processor, self.images = model, processor, images
        self.batch_size, self.prompt = batch_size, prompt

    def score_groups(
        self, groups: Sequence[tuple[Item, Sequence[Item]]], on_pairs: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        pairs = [(q, c) for q, cands in groups for c in cands]
        last = {"done": 0}

        def step(done: int, total: int) -> None:
            if on_pairs is not None:  # score_pairs reports positions in its sorted order: pass the delta
                on_pairs(min(done, total) - last["done"])
                last["done"] = min(done, total)

        flat = score_pairs(self.model, self.processor, pairs, self.images, batch_size=self.batch_size,
                           prompt=self.prompt, progress=False, on_batch=step)  # fmt: skip
        bounds = np.cumsum([0, *(len(c) for _, c in groups)])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
