"""Reranking at evaluation: the embedder's top-k reordered listwise (greedy answer) or pairwise (P(Yes))."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unime_assets.config import RERANK_MAX_PIXELS
from unime_assets.judging.plain import score_pairs
from unime_assets.models.encoding import Item
from unime_assets.quiet import bar_disabled
from unime_assets.reranking.prompts import images_of, listwise_messages

# Qwen2.5-VL's patch grid: sides are multiples of 28 (14-pixel patches merged 2x2).
PATCH_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28  # the official reranker's lower bound


def smart_resize(height: int, width: int, max_pixels: int, min_pixels: int = MIN_PIXELS,
                 factor: int = PATCH_FACTOR) -> tuple[int, int]:  # fmt: skip
    """(height, width) the official reranker resizes an image to (Rerank/collators/qwen2_5_vision_process.py
    `smart_resize`): sides rounded to multiples of `factor`; above max_pixels both sides are scaled by
    sqrt(area / max_pixels) and floored, below min_pixels scaled up and ceiled; aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} is above 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return max(factor, h), max(factor, w)


class MaxPixels:
    """Wraps an image loader: every image is resized (BICUBIC) to the official reranker's size for
    it, at most `max_pixels` (default 300*28*28), aspect ratio kept, sides multiples of 28; the
    processor then leaves it as it is. `max_pixels=None` passes images through unchanged.

    The reranker sees the query and up to ten candidate images in one prompt; at the embedder's
    1344x1344 eval size that is ~25K visual tokens, hence the official budget (1344x1344 -> 476x476).
    """

    def __init__(self, images: Callable[[str], Image.Image], max_pixels: int | None = RERANK_MAX_PIXELS):
        self.images, self.max_pixels = images, max_pixels

    def __call__(self, rel: str) -> Image.Image:
        img = self.images(rel)
        if not self.max_pixels:
            return img
        w, h = img.size
        new_h, new_w = smart_resize(h, w, self.max_pixels)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        return img


@torch.inference_mode()
def rerank_listwise(model, processor, queries: Sequence[Item], candidate_lists: Sequence[Sequence[Item]],
                    images: Callable[[str], Image.Image], *, batch_size: int = 8, max_new_tokens: int = 16,
                    progress: bool = True) -> list[str]:  # fmt: skip
    """Greedy listwise answer text per query (parse it with `evaluation.parse_listwise_answer`)."""
    device = next(model.parameters()).device
    prompts = [
        processor.apply_chat_template(listwise_messages(q, cs), tokenize=False, add_generation_prompt=True)
        for q, cs in zip(queries, candidate_lists, strict=True)
    ]
    answers = [""] * len(queries)
    order = sorted(range(len(queries)), key=lambda i: len(prompts[i]))
    pad_id = processor.tokenizer.pad_token_id
    for start in tqdm(range(0, len(order), batch_size), desc="rerank", disable=bar_disabled(progress), leave=False):
        idx = order[start : start + batch_size]
        imgs = [images(p) for i in idx for p in images_of([queries[i], *candidate_lists[i]])]
        inputs = processor(
            text=[prompts[i] for i in idx], images=imgs or None, return_tensors="pt", padding=True
        )
        inputs = inputs.to(device)
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        texts = processor.tokenizer.batch_decode(
            gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for i, text in zip(idx, texts, strict=True):
            answers[i] = text
    return answers


def rerank_pairwise(model, processor, queries: Sequence[Item], candidate_lists: Sequence[Sequence[Item]],
                    images: Callable[[str], Image.Image], *, batch_size: int = 8,
                    progress: bool = True) -> list[np.ndarray]:  # fmt: skip
    """P(Yes) of every (query, candidate) with the pairwise prompt, one array per query in list order."""
    pairs = [(q, c) for q, cs in zip(queries, candidate_lists, strict=True) for c in cs]
    if not pairs:
        return [np.zeros(0) for _ in queries]
    flat = score_pairs(model, processor, pairs, images, batch_size=batch_size, desc="rerank pairwise",
                       progress=progress)  # fmt: skip
    out, pos = [], 0
    for cs in candidate_lists:
        out.append(flat[pos : pos + len(cs)])
        pos += len(cs)
    return out
