"""Turn (text, image) items into model inputs and last-token embeddings.

Conventions follow VLM2Vec/UniME-V2 for Qwen2-VL embedders: the raw MMEB text is used with no
chat template; the `<|image_1|>` placeholder becomes the backbone's image token only here, at
encoding time; the embedding is the final hidden state of the last real token, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from unime_assets.quiet import bar_disabled

MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"


class ItemError(ValueError):
    """An item that cannot be turned into model inputs (its image does not load, or its text has no
    slot for its image). Carries the item's image path and text so a caller can name the row."""

    def __init__(self, message: str, *, image: str = "", text: str = "") -> None:
        super().__init__(message)
        self.image, self.text = image, text


@dataclass(frozen=True)
class Item:
    """One side of a pair: MMEB text (placeholder kept) and an image path relative to a root ('' = none)."""

    text: str
    image: str = ""


def model_text(text: str, has_image: bool, image_token: str) -> str:
    # An item without an image (e.g. WebQA train queries) may still carry the placeholder; the Qwen
    # processor would count it as an image slot, so it is dropped rather than kept as a token.
    if has_image and not text.strip():  # an image-only item: the image's slot is its whole text
        return image_token
    return text.replace(MMEB_IMAGE_PLACEHOLDER, image_token if has_image else "")


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last attended token, for left or right padding."""
    if bool(attention_mask[:, -1].all()):  # left padding (or none): the last column is real
        return hidden[:, -1]
    last = attention_mask.long().sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ImageLoader:
    """Loads images under a root (safe resolution), with an optional fixed resize and a small cache.

    The cache is bounded by count: at the published 1344x1344 eval size one image is ~5 MB.
    """

    def __init__(self, root: str | Path, resize: int | None = None, cache_size: int = 256):
        from unime_assets.data.images import load_image, resolve_image_path

        self.root = Path(root)
        self.resize = (resize, resize) if resize else None
        self._resolve, self._load = resolve_image_path, load_image
        self._cache: dict[str, Image.Image] = {}
        self._cache_size = cache_size

    def __call__(self, rel: str) -> Image.Image:
        img = self._cache.get(rel)
        if img is None:
            try:
                img = self._load(self._resolve(self.root, rel), resize=self.resize)
            except Exception as e:  # PIL's "image file is truncated" names no file: this does
                raise ItemError(f"image {rel!r} under {self.root}: {type(e).__name__}: {e}", image=rel) from e
            if len(self._cache) < self._cache_size:
                self._cache[rel] = img
        return img


def embed_inputs(items: Sequence[Item], processor, images: Callable[[str], Image.Image], image_token: str,
                 max_length: int | None = None):  # fmt: skip
    """Processor inputs of a batch; `max_length` truncates each sequence on the right (the official
    embedder's --max_len), after the image tokens are expanded."""
    for it in items:  # the processor pairs each image slot with an image; its error names neither
        if it.image and it.text.strip() and it.text.count(MMEB_IMAGE_PLACEHOLDER) != 1:
            raise ItemError(f"item with image {it.image!r} has {it.text.count(MMEB_IMAGE_PLACEHOLDER)} "
                            f"'{MMEB_IMAGE_PLACEHOLDER}' placeholders in its text {it.text[:80]!r}, not one",
                            image=it.image, text=it.text)  # fmt: skip
    texts = [model_text(it.text, bool(it.image), image_token) for it in items]
    imgs = [images(it.image) for it in items if it.image]
    trunc = {"truncation": True, "max_length": max_length} if max_length else {}
    return processor(text=texts, images=imgs or None, return_tensors="pt", padding=True, **trunc)


def forward_embeddings(model, inputs, normalize: bool = True) -> torch.Tensor:
    """Last-token embeddings with gradients (used by training and, under no_grad, by encoding)."""
    out = model(**inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    emb = last_token_pool(out.hidden_states[-1], inputs["attention_mask"]).float()
    return F.normalize(emb, dim=-1) if normalize else emb


def _length_key(it: Item) -> tuple[int, int]:
    return (len(it.text), int(bool(it.image)))


@torch.inference_mode()
def encode_items(
    model,
    processor,
    items: Sequence[Item],
    images: Callable[[str], Image.Image],
    image_token: str,
    *,
    batch_size: int = 32,
    desc: str = "encode",
    progress: bool = True,
) -> np.ndarray:
    """(len(items), D) float32 normalised embeddings; items are length-bucketed, output keeps order."""
    if not items:
        raise ValueError("encode_items: no items")
    device = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda i: _length_key(items[i]))
    out: np.ndarray | None = None
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=bar_disabled(progress), leave=False):
        idx = order[start : start + batch_size]
        inputs = embed_inputs([items[i] for i in idx], processor, images, image_token).to(device)
        emb = forward_embeddings(model, inputs).cpu().numpy()
        if out is None:
            out = np.zeros((len(items), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
    assert out is not None
    return out
