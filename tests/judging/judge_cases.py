"""Shared judge test cases: images of different sizes and (query, candidates) groups mixing text and images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unime_assets.models.encoding import ImageLoader, Item

# Different sizes give different image grids, so M-RoPE positions after each image differ.
SIZES = {"a.png": (40, 60), "b.png": (90, 50), "c.png": (112, 112), "d.png": (30, 30), "e.png": (120, 64)}


def write_images(root: Path, seed: int = 0) -> ImageLoader:
    rng = np.random.default_rng(seed)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    return ImageLoader(root)


def mixed_groups() -> list[tuple[Item, list[Item]]]:
    """Queries with and without images; candidates text-only, image-only and both, repeated images."""
    cands = [
        Item("a red circle"),
        Item("<|image_1|>\nRepresent the given image.", "a.png"),
        Item("", "b.png"),
        Item("two blue squares on the left side of the picture", "c.png"),
        Item(":-) punctuation first"),
        Item("<|image_1|>\nRepresent the given image.", "d.png"),
        Item("green", "a.png"),
        Item("a long caption " * 6),
    ]
    return [
        (
            Item(
                "<|image_1|>\nRepresent the given image with the following question: What color?\n", "e.png"
            ),
            cands,
        ),
        (Item("a photo of a red circle\n"), cands[::-1]),
        (Item("<|image_1|>\nFind a similar image.", "c.png"), cands[2:7]),
        (Item("", "d.png"), cands[:3]),
        (Item("<|image_1|>\nA stray placeholder on a text-only query"), [cands[4], cands[1]]),
    ]
