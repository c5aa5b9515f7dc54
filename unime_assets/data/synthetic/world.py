"""The synthetic shapes world: palette, shapes, positions and how images are drawn.

3 shapes x 8 saturated colours x 4 quadrants on a dark, faintly noisy background, drawn large
enough (a shape spans most of its 14 px patches) that a tiny ViT can learn every task. Each subset
draws from its own numpy RNG seeded by (seed, stable hash of the subset, train/eval).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

Split = Literal["train", "eval"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 200),
    "orange": (250, 135, 10),
    "white": (245, 245, 245),
    "cyan": (30, 215, 225),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Quadrant index q: row = q // 2, column = q % 2.
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
BACKGROUND = 48  # dark grey; every palette colour is far from it, so object pixels are unambiguous
NOISE = 6  # +-NOISE grey levels of per-pixel background noise


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    quad: int = 0  # ignored by centred single-object images



def stable_hash(name: str) -> int:
    # Python's hash() is salted per process; the stream for a subset must not be.
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def subset_rng(seed: int, subset: str, split: Split) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, stable_hash(subset), 0 if split == "train" else 1])
    )


def canvas(rng: np.random.Generator, size: int) -> Image.Image:
    noise = rng.integers(-NOISE, NOISE + 1, size=(size, size, 1), dtype=np.int16)
    grey = np.clip(BACKGROUND + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey, 3, axis=2))  # HxWx3 uint8 -> RGB


def draw_shape(draw: ImageDraw.ImageDraw, obj: Obj, x0: int, y0: int, side: int) -> None:
    rgb = COLOURS[obj.colour]
    x1, y1 = x0 + side - 1, y0 + side - 1
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=rgb)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def place(
    rng: np.random.Generator, ox: int, oy: int, region: int, lo: float, hi: float
) -> tuple[int, int, int]:
    """A random square box of side lo..hi * region inside the region at (ox, oy)."""
    side = max(3, round(region * float(rng.uniform(lo, hi))))
    slack = region - side
    return ox + int(rng.integers(0, slack + 1)), oy + int(rng.integers(0, slack + 1)), side


def single_image(rng: np.random.Generator, size: int, obj: Obj) -> Image.Image:
    """One big object (bounding box 72-88% of the side) anywhere on the canvas."""
    img = canvas(rng, size)
    draw_shape(ImageDraw.Draw(img), obj, *place(rng, 0, 0, size, 0.72, 0.88))
    return img


def quadrant_box(quad: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of quadrant `quad` of a size x size image (PIL crop box)."""
    q = size // 2
    left, top = (quad % 2) * q, (quad // 2) * q
    return left, top, left + q, top + q


def scene(rng: np.random.Generator, size: int, objs: Sequence[Obj]) -> Image.Image:
    """Each object fills most (bounding box 72-92%) of its own quadrant."""
    img = canvas(rng, size)
    draw = ImageDraw.Draw(img)
    for obj in objs:
        left, top, right, _ = quadrant_box(obj.quad, size)
        draw_shape(draw, obj, *place(rng, left, top, right - left, 0.72, 0.92))
    return img


def pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def rand_obj(rng: np.random.Generator) -> Obj:
    return Obj(pick(rng, COLOUR_NAMES), pick(rng, SHAPES), int(rng.integers(4)))


def rand_scene(rng: np.random.Generator, n_objs: int) -> list[Obj]:
    """`n_objs` objects with pairwise different colours, in different quadrants."""
    colours = rng.choice(len(COLOUR_NAMES), size=n_objs, replace=False)
    quads = rng.choice(4, size=n_objs, replace=False)
    return [
        Obj(COLOUR_NAMES[int(c)], pick(rng, SHAPES), int(q)) for c, q in zip(colours, quads, strict=True)
    ]
