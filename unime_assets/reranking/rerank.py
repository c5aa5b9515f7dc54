"""Reranking at evaluation: the embedder's top-k reordered listwise (greedy answer) or pairwise (P(Yes))."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unime_assets.judging.plain import score_pairs
from unime_assets.models.encoding import Item
from unime_assets.quiet import bar_disabled
from unime_assets.reranking.prompts import images_of, listwise_messages

# The official reranker caps images at 300*28*28 pixels (it notes that more runs out of memory listwise).
RERANK_MAX_PIXELS = 300 * 28 * 28


class MaxPixels:
    """Wraps an image loader: images above `max_pixels` are shrunk, keeping their aspect ratio.

    The reranker sees the query and up to ten candidate images in one prompt; at the embedder's
    1344x1344 eval size that is ~25K visual tokens, so it gets the official reranker's budget instead.
    """

    def __init__(self, images: Callable[[str], Image.Image], max_pixels: int | None = RERANK_MAX_PIXELS):
        self.images, self.max_pixels = images, max_pixels

    def __call__(self, rel: str) -> Image.Image:
        img = self.images(rel)
        w, h = img.size
        if self.max_pixels and w * h > self.max_pixels:
            scale = (self.max_pixels / (w * h)) ** 0.5
            img = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
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
