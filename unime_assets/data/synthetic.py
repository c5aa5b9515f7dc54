"""The embedded default: a tiny, deterministic, learnable shapes world in the real MMEB on-disk formats.

Everything downstream (readers, encoders, eval) treats this data exactly like real MMEB, so the
files follow `mmeb.md` §2 byte for byte in structure: MMEB-train `<Subset>/original-00000-of-00001.parquet`
(all `string` columns, image paths `images/<Subset>/Train/...` relative to the MMEB-train root) and
MMEB-eval `<Subset>/test-00000-of-00001.parquet` (`tgt_*` are `list<string>`, ground truth at [0],
image paths `<Subset>/<name>.png` relative to `eval_images/`). Prompts reuse the real MMEB templates,
including their trailing-"\\n" conventions.

The world: 3 shapes x 8 saturated colours x 4 quadrants on a dark, faintly noisy background, drawn
large enough (a shape spans most of its 14 px patches) that a tiny ViT can learn every task.
Each subset draws from its own numpy RNG seeded by (seed, stable hash of the subset, train/eval),
so subsets are independent, train and eval never share a stream, and output is identical across
processes (PNG and parquet bytes included, for a fixed pillow/pyarrow version).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from ..io import atomic_path
from .catalog import SYNTHETIC_EVAL, SYNTHETIC_TRAIN
from .mmeb import read_eval_subset, read_train_subset

# Bump when the generated content changes, so an existing manifest no longer matches.
GENERATOR_VERSION = 1

IMAGE_TOKEN = "<|image_1|>"
# Catalogue order matters: classification candidates list the non-GT classes in this order.
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

# Real MMEB templates (mmeb.md §2.1, §6). Whitespace is part of the data: never strip.
CLS_COLOR_QRY = f"{IMAGE_TOKEN}\nRepresent the given image for classification\n"
CLS_SHAPE_QRY = f"{IMAGE_TOKEN}\nIdentify the object shown in the image\n"
CLS_HUE_QRY = f"{IMAGE_TOKEN}\nIdentify the color depicted in the image\n"
I2T_QRY = f"{IMAGE_TOKEN}\nFind an image caption describing the given everyday image.\n"
I2I_QRY = f"{IMAGE_TOKEN}\nFind a day-to-day image that looks similar to the provided image.\n"
IMAGE_TGT = f"{IMAGE_TOKEN}\nRepresent the given image.\n"
CROP_TGT = f"{IMAGE_TOKEN}\nRepresent the given cropped image of the object"  # no trailing \n, as in MMEB


def vqa_qry(question: str) -> str:
    return f"{IMAGE_TOKEN}\nRepresent the given image with the following question: {question}\n"


def t2i_qry(caption: str) -> str:
    return f"Find me an everyday image that matches the given caption: {caption}\n"


def ground_qry(label: str) -> str:
    return f'{IMAGE_TOKEN}\nSelect the portion of the image that isolates the object labeled as "{label}"\n'


def refer_qry(colour: str, position: str) -> str:
    return (
        f"{IMAGE_TOKEN}\nSelect the portion of the image that follows the language expressions. "
        f"the {colour} one in the {position}"
    )


def caption(colour: str, shape: str, position: str) -> str:
    return f"A {colour} {shape} in the {position}."


ALL_CAPTIONS: tuple[str, ...] = tuple(
    caption(c, s, p) for c in COLOUR_NAMES for s in SHAPES for p in POSITIONS
)

TRAIN_SCHEMA = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text", "pos_image_path"]])
TRAIN_NEG_SCHEMA = pa.schema(
    [
        (c, pa.string())
        for c in ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]
    ]
)
EVAL_SCHEMA = pa.schema(
    [
        ("qry_text", pa.string()),
        ("qry_img_path", pa.string()),
        ("tgt_text", pa.list_(pa.string())),
        ("tgt_img_path", pa.list_(pa.string())),
    ]
)
TRAIN_FILE = "original-00000-of-00001.parquet"
EVAL_FILE = "test-00000-of-00001.parquet"
# SynVQA mirrors A-OKVQA, whose train file carries neg_text/neg_image_path.
NEG_SUBSETS = frozenset({"SynVQA"})

Split = Literal["train", "eval"]
Row = dict[str, object]


@dataclass(frozen=True)
class SyntheticLayout:
    train_root: Path  # MMEB-train root: <Subset>/original-*.parquet and images/<Subset>/Train/*
    eval_root: Path  # MMEB-eval root: <Subset>/test-*.parquet
    eval_image_root: Path  # eval image paths are relative to this
    train_subsets: list[str] = field(default_factory=list)
    eval_subsets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Obj:
    colour: str
    shape: str
    quad: int = 0  # ignored by centred single-object images


# ---------------------------------------------------------------------------------------------- drawing


def _stable_hash(name: str) -> int:
    # Python's hash() is salted per process; the stream for a subset must not be.
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def _rng(seed: int, subset: str, split: Split) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, _stable_hash(subset), 0 if split == "train" else 1])
    )


def _canvas(rng: np.random.Generator, size: int) -> Image.Image:
    noise = rng.integers(-NOISE, NOISE + 1, size=(size, size, 1), dtype=np.int16)
    grey = np.clip(BACKGROUND + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey, 3, axis=2))  # HxWx3 uint8 -> RGB


def _draw_shape(draw: ImageDraw.ImageDraw, obj: _Obj, x0: int, y0: int, side: int) -> None:
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


def _place(
    rng: np.random.Generator, ox: int, oy: int, region: int, lo: float, hi: float
) -> tuple[int, int, int]:
    """A random square box of side lo..hi * region inside the region at (ox, oy)."""
    side = max(3, round(region * float(rng.uniform(lo, hi))))
    slack = region - side
    return ox + int(rng.integers(0, slack + 1)), oy + int(rng.integers(0, slack + 1)), side


def _single_image(rng: np.random.Generator, size: int, obj: _Obj) -> Image.Image:
    """One big object (bounding box 72-88% of the side) anywhere on the canvas."""
    img = _canvas(rng, size)
    _draw_shape(ImageDraw.Draw(img), obj, *_place(rng, 0, 0, size, 0.72, 0.88))
    return img


def quadrant_box(quad: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of quadrant `quad` of a size x size image (PIL crop box)."""
    q = size // 2
    left, top = (quad % 2) * q, (quad // 2) * q
    return left, top, left + q, top + q


def _scene(rng: np.random.Generator, size: int, objs: Sequence[_Obj]) -> Image.Image:
    """Each object fills most (bounding box 72-92%) of its own quadrant."""
    img = _canvas(rng, size)
    draw = ImageDraw.Draw(img)
    for obj in objs:
        left, top, right, _ = quadrant_box(obj.quad, size)
        _draw_shape(draw, obj, *_place(rng, left, top, right - left, 0.72, 0.92))
    return img


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _rand_obj(rng: np.random.Generator) -> _Obj:
    return _Obj(_pick(rng, COLOUR_NAMES), _pick(rng, SHAPES), int(rng.integers(4)))


def _rand_scene(rng: np.random.Generator, n_objs: int) -> list[_Obj]:
    """`n_objs` objects with pairwise different colours, in different quadrants."""
    colours = rng.choice(len(COLOUR_NAMES), size=n_objs, replace=False)
    quads = rng.choice(4, size=n_objs, replace=False)
    return [
        _Obj(COLOUR_NAMES[int(c)], _pick(rng, SHAPES), int(q)) for c, q in zip(colours, quads, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- rows


@dataclass
class _Ctx:
    train_root: Path
    eval_image_root: Path
    image_size: int
    n_candidates: int
    n_images: Counter[str] = field(default_factory=Counter)

    def save(self, subset: str, split: Split, stem: str, img: Image.Image) -> str:
        """Write a PNG and return the path as stored in the parquet (MMEB's relative convention)."""
        if split == "train":
            rel = f"images/{subset}/Train/{subset}_{stem}.png"
            dest = self.train_root / rel
        else:
            rel = f"{subset}/{stem}.png"
            dest = self.eval_image_root / rel
        with atomic_path(dest) as tmp:
            img.save(tmp, format="PNG")
        self.n_images[split] += 1
        return rel


def _train_row(qry: str, qry_img: str, pos: str, pos_img: str, neg: str | None = None) -> Row:
    row: Row = {"qry": qry, "qry_image_path": qry_img, "pos_text": pos, "pos_image_path": pos_img}
    if neg is not None:
        row |= {"neg_text": neg, "neg_image_path": ""}
    return row


def _eval_row(qry: str, qry_img: str, texts: list[str], imgs: list[str]) -> Row:
    assert len(texts) == len(imgs) and texts, "candidate lists must be non-empty and aligned"
    return {"qry_text": qry, "qry_img_path": qry_img, "tgt_text": texts, "tgt_img_path": imgs}


def _gt_first(label: str, universe: Sequence[str]) -> list[str]:
    return [label, *(u for u in universe if u != label)]


# A "text item": (query text, query image path, target label, negative label, candidate universe).
_TextItem = tuple[str, str, str, str | None, Sequence[str]]


def _text_target(make: Callable[[_Ctx, str, np.random.Generator, int, Split], _TextItem]):
    """Subsets whose target is a label text: classification, VQA, image->text with a closed vocabulary."""

    def gen(ctx: _Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
        rows: list[Row] = []
        for i in range(n):
            qry, img, label, neg, universe = make(ctx, subset, rng, i, split)
            if split == "train":
                rows.append(_train_row(qry, img, label, "", neg if subset in NEG_SUBSETS else None))
            else:
                cands = _gt_first(label, universe)
                rows.append(_eval_row(qry, img, cands, [""] * len(cands)))
        return rows

    return gen


def _classify(prompt: str, attr: Literal["colour", "shape"]):
    universe = COLOUR_NAMES if attr == "colour" else SHAPES

    def make(ctx: _Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
        obj = _rand_obj(rng)
        path = ctx.save(subset, split, f"image_{i}", _single_image(rng, ctx.image_size, obj))
        return prompt, path, getattr(obj, attr), None, universe

    return _text_target(make)


def _vqa_colour(ctx: _Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
    # Two objects with different shapes AND colours, so "the {shape}" is unique and the negative differs.
    shapes = rng.choice(len(SHAPES), size=2, replace=False)
    colours = rng.choice(len(COLOUR_NAMES), size=2, replace=False)
    quads = rng.choice(4, size=2, replace=False)
    objs = [_Obj(COLOUR_NAMES[int(colours[k])], SHAPES[int(shapes[k])], int(quads[k])) for k in range(2)]
    asked = int(rng.integers(2))
    path = ctx.save(subset, split, f"image_{i}", _scene(rng, ctx.image_size, objs))
    qry = vqa_qry(f"What color is the {objs[asked].shape}?")
    return qry, path, objs[asked].colour, objs[1 - asked].colour, COLOUR_NAMES


def _vqa_count(ctx: _Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
    k = int(rng.integers(1, 5))
    quads = rng.choice(4, size=k, replace=False)
    objs = [replace(_rand_obj(rng), quad=int(q)) for q in quads]
    path = ctx.save(subset, split, f"image_{i}", _scene(rng, ctx.image_size, objs))
    return vqa_qry("How many shapes are in the image?"), path, COUNT_WORDS[k - 1], None, COUNT_WORDS


def _vqa_where(ctx: _Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
    obj = _rand_obj(rng)
    path = ctx.save(subset, split, f"image_{i}", _scene(rng, ctx.image_size, [obj]))
    qry = vqa_qry(f"Where is the {obj.colour} {obj.shape}?")
    return qry, path, POSITIONS[obj.quad], None, POSITIONS


def _caption_of(o: _Obj) -> str:
    return caption(o.colour, o.shape, POSITIONS[o.quad])


def _grow_pool(
    rng: np.random.Generator, keys: list[Hashable], n_rows: int, need: int, new_key: Callable[[], Hashable]
) -> None:
    """Append random pool entries until each of the first `n_rows` keys has `need` entries with another key.

    With few eval rows the other rows alone cannot fill a candidate list, so extra gallery items
    (never queried) are drawn, as real MMEB galleries are larger than the query set.
    """
    counts = Counter(keys)
    while n_rows and min(len(keys) - counts[keys[i]] for i in range(n_rows)) < need:
        k = new_key()
        keys.append(k)
        counts[k] += 1


def _other_keys(rng: np.random.Generator, keys: Sequence[Hashable], i: int, need: int) -> list[int]:
    """`need` random pool indices whose key differs from keys[i] (distractors are never a second GT)."""
    others = [j for j, k in enumerate(keys) if k != keys[i]]
    return [others[int(j)] for j in rng.choice(len(others), size=need, replace=False)]


def _gen_t2i(ctx: _Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
    if split == "train":
        rows: list[Row] = []
        for i in range(n):
            obj = _rand_obj(rng)
            path = ctx.save(subset, split, f"image_{i}", _scene(rng, ctx.image_size, [obj]))
            rows.append(_train_row(t2i_qry(_caption_of(obj)), "", IMAGE_TGT, path))
        return rows
    objs = [_rand_obj(rng) for _ in range(n)]
    pool: list[Hashable] = list(objs)
    # keys are whole objects; distractors must differ in caption, i.e. in the object itself
    _grow_pool(rng, pool, n, ctx.n_candidates - 1, lambda: _rand_obj(rng))
    gallery = [
        ctx.save(subset, split, f"image_{j}", _scene(rng, ctx.image_size, [o])) for j, o in enumerate(pool)
    ]
    rows = []
    for i in range(n):
        cands = [gallery[i]] + [gallery[j] for j in _other_keys(rng, pool, i, ctx.n_candidates - 1)]
        rows.append(_eval_row(t2i_qry(_caption_of(objs[i])), "", [IMAGE_TGT] * len(cands), cands))
    return rows


def _gen_i2t(ctx: _Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
    rows: list[Row] = []
    for i in range(n):
        obj = _rand_obj(rng)
        path = ctx.save(subset, split, f"image_{i}", _scene(rng, ctx.image_size, [obj]))
        cap = _caption_of(obj)
        if split == "train":
            rows.append(_train_row(I2T_QRY, path, cap, ""))
        else:
            others = [c for c in ALL_CAPTIONS if c != cap]
            picks = rng.choice(len(others), size=ctx.n_candidates - 1, replace=False)
            cands = [cap] + [others[int(j)] for j in picks]
            rows.append(_eval_row(I2T_QRY, path, cands, [""] * len(cands)))
    return rows


def _gen_similar(ctx: _Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
    assert split == "eval", "SynSimilar is OOD (eval only)"
    queries = [_rand_obj(rng) for _ in range(n)]
    # GT: same colour and shape, another quadrant
    gts = [replace(q, quad=int((q.quad + 1 + rng.integers(3)) % 4)) for q in queries]
    gallery_objs: list[_Obj] = list(gts)
    keys: list[Hashable] = [(o.colour, o.shape) for o in gts]
    extra: list[_Obj] = []

    def new_key() -> Hashable:
        extra.append(_rand_obj(rng))
        return (extra[-1].colour, extra[-1].shape)

    _grow_pool(rng, keys, n, ctx.n_candidates - 1, new_key)
    gallery_objs += extra
    q_paths = [
        ctx.save(subset, split, f"query_{i}", _scene(rng, ctx.image_size, [o])) for i, o in enumerate(queries)
    ]
    g_paths = [
        ctx.save(subset, split, f"image_{j}", _scene(rng, ctx.image_size, [o]))
        for j, o in enumerate(gallery_objs)
    ]
    rows: list[Row] = []
    for i in range(n):
        cands = [g_paths[i]] + [g_paths[j] for j in _other_keys(rng, keys, i, ctx.n_candidates - 1)]
        rows.append(_eval_row(I2I_QRY, q_paths[i], [IMAGE_TGT] * len(cands), cands))
    return rows


def _grounding(refer: bool):
    """Scene of 2*image_size with 3 objects; the target is the crop of the named object's quadrant."""

    def qry_of(obj: _Obj) -> str:
        return (
            refer_qry(obj.colour, POSITIONS[obj.quad]) if refer else ground_qry(f"{obj.colour} {obj.shape}")
        )

    def key_of(obj: _Obj) -> Hashable:
        # an other-scene crop matching everything the query names would be a second GT
        return obj.colour if refer else (obj.colour, obj.shape)

    def crops(
        ctx: _Ctx, subset: str, split: Split, stem: str, img: Image.Image, objs: Sequence[_Obj]
    ) -> list[str]:
        size = 2 * ctx.image_size
        return [
            ctx.save(
                subset, split, f"{stem}_object_{o.colour}_{o.shape}", img.crop(quadrant_box(o.quad, size))
            )
            for o in objs
        ]

    def gen(ctx: _Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
        size = 2 * ctx.image_size
        scenes: list[list[_Obj]] = []
        targets: list[int] = []
        for _ in range(n):
            scenes.append(_rand_scene(rng, 3))
            targets.append(int(rng.integers(3)))
        rows: list[Row] = []
        if split == "train":
            for i, (objs, t) in enumerate(zip(scenes, targets, strict=True)):
                img = _scene(rng, size, objs)
                scene_path = ctx.save(subset, split, f"image_{i}", img)
                (crop_path,) = crops(ctx, subset, split, f"image_{i}", img, [objs[t]])
                rows.append(_train_row(qry_of(objs[t]), scene_path, CROP_TGT, crop_path))
            return rows

        # Extra scenes (never queried) until each row has enough other-scene crops with another key.
        # Colours are distinct within a scene, so exactly one crop of a scene shares the GT key.
        need_other = max(0, ctx.n_candidates - 3)
        counts = Counter(key_of(o) for s in scenes for o in s)

        def short() -> bool:
            total = 3 * len(scenes)
            return any(total - 3 - (counts[key_of(scenes[i][targets[i]])] - 1) < need_other for i in range(n))

        while n and short():
            scenes.append(_rand_scene(rng, 3))
            counts.update(key_of(o) for o in scenes[-1])

        scene_paths: list[str] = []
        crop_paths: list[list[str]] = []
        for j, objs in enumerate(scenes):
            img = _scene(rng, size, objs)
            if j < n:  # extra scenes only contribute crops
                scene_paths.append(ctx.save(subset, split, f"image_{j}", img))
            crop_paths.append(crops(ctx, subset, split, f"image_{j}", img, objs))
        for i in range(n):
            objs, t = scenes[i], targets[i]
            gt_key = key_of(objs[t])
            cands = [crop_paths[i][t]] + [crop_paths[i][k] for k in range(3) if k != t]
            pool = [
                crop_paths[j][k]
                for j in range(len(scenes))
                if j != i
                for k in range(3)
                if key_of(scenes[j][k]) != gt_key
            ]
            picks = rng.choice(len(pool), size=need_other, replace=False)
            cands = (cands + [pool[int(p)] for p in picks])[: ctx.n_candidates]
            rows.append(_eval_row(qry_of(objs[t]), scene_paths[i], [CROP_TGT] * len(cands), cands))
        return rows

    return gen


_Gen = Callable[[_Ctx, str, np.random.Generator, int, Split], list[Row]]
GENERATORS: dict[str, _Gen] = {
    "SynColor": _classify(CLS_COLOR_QRY, "colour"),
    "SynShape": _classify(CLS_SHAPE_QRY, "shape"),
    "SynHue": _classify(CLS_HUE_QRY, "colour"),
    "SynVQA": _text_target(_vqa_colour),
    "SynCount": _text_target(_vqa_count),
    "SynWhere": _text_target(_vqa_where),
    "SynCaps_t2i": _gen_t2i,
    "SynCaps_i2t": _gen_i2t,
    "SynSimilar": _gen_similar,
    "SynGround": _grounding(refer=False),
    "SynRefer": _grounding(refer=True),
}


# ---------------------------------------------------------------------------------------------- files


def _write_table(rows: list[Row], schema: pa.Schema, dest: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)


def _write_text(text: str, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _readme(subsets: Sequence[str], split: str, what: str) -> str:
    # Same YAML as the HF cards, so `datasets.load_dataset(root, subset)` also works on this data.
    lines = ["---", "configs:"]
    for s in subsets:
        lines += [f"- config_name: {s}", "  data_files:", f"  - split: {split}", f"    path: {s}/{split}-*"]
    lines += [
        "---",
        "",
        f"Synthetic {what} written by `unime_assets.data.synthetic` (MMEB on-disk format).",
        "",
    ]
    return "\n".join(lines)


def _count_files(layout: SyntheticLayout) -> dict[str, int]:
    return {
        "train_parquet": sum(
            1 for s in layout.train_subsets for _ in (layout.train_root / s).glob("*.parquet")
        ),
        "eval_parquet": sum(1 for s in layout.eval_subsets for _ in (layout.eval_root / s).glob("*.parquet")),
        "train_images": sum(1 for _ in (layout.train_root / "images").rglob("*.png")),
        "eval_images": sum(1 for _ in layout.eval_image_root.rglob("*.png")),
    }


def _manifest_matches(path: Path, params: dict, layout: SyntheticLayout) -> bool:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # params alone are not enough: files may have been deleted since
    return manifest.get("params") == params and manifest.get("files") == _count_files(layout)


def generate(
    out_root: str | Path,
    *,
    n_train: int = 120,
    n_eval: int = 40,
    n_candidates: int = 8,
    image_size: int = 56,
    seed: int = 0,
) -> SyntheticLayout:
    """Write the synthetic MMEB-format dataset under `out_root` (idempotent) and return its layout.

    `n_train` train rows per IND subset, `n_eval` eval rows per subset, `n_candidates` candidates per
    retrieval/grounding eval row (classification/VQA rows list their whole closed label set).
    `manifest.json` is written last; an existing manifest with the same params (and file counts)
    means the data is complete and nothing is rewritten. Otherwise the three data directories are
    deleted and regenerated, so no stale file from other params survives.
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be >= 1, got {n_train}, {n_eval}")
    if not 2 <= n_candidates <= len(ALL_CAPTIONS):
        raise ValueError(f"n_candidates must be in [2, {len(ALL_CAPTIONS)}], got {n_candidates}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    missing = sorted(set(SYNTHETIC_EVAL) - set(GENERATORS))
    if missing:
        raise RuntimeError(f"no synthetic generator for catalog subset(s) {missing}")

    out_root = Path(out_root)
    layout = SyntheticLayout(
        train_root=out_root / "MMEB-train",
        eval_root=out_root / "MMEB-eval",
        eval_image_root=out_root / "eval_images",
        train_subsets=list(SYNTHETIC_TRAIN),
        eval_subsets=list(SYNTHETIC_EVAL),
    )
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_eval": n_eval,
        "n_candidates": n_candidates,
        "image_size": image_size,
        "seed": seed,
    }
    manifest_path = out_root / "manifest.json"
    if _manifest_matches(manifest_path, params, layout):
        return layout

    manifest_path.unlink(missing_ok=True)  # from here on the directory is "incomplete"
    for d in (layout.train_root, layout.eval_root, layout.eval_image_root):
        shutil.rmtree(d, ignore_errors=True)

    ctx = _Ctx(layout.train_root, layout.eval_image_root, image_size, n_candidates)
    rows_written: dict[str, dict[str, int]] = {"train": {}, "eval": {}}
    for subset in layout.train_subsets:
        rows = GENERATORS[subset](ctx, subset, _rng(seed, subset, "train"), n_train, "train")
        keys = [(r["qry"], r["qry_image_path"], r["pos_text"], r["pos_image_path"]) for r in rows]
        if len(set(keys)) != len(keys):
            raise RuntimeError(f"synthetic train subset {subset} has duplicate pairs")
        schema = TRAIN_NEG_SCHEMA if subset in NEG_SUBSETS else TRAIN_SCHEMA
        _write_table(rows, schema, layout.train_root / subset / TRAIN_FILE)
        rows_written["train"][subset] = len(rows)
    for subset in layout.eval_subsets:
        rows = GENERATORS[subset](ctx, subset, _rng(seed, subset, "eval"), n_eval, "eval")
        _write_table(rows, EVAL_SCHEMA, layout.eval_root / subset / EVAL_FILE)
        rows_written["eval"][subset] = len(rows)
    _write_text(_readme(layout.train_subsets, "original", "MMEB-train"), layout.train_root / "README.md")
    _write_text(_readme(layout.eval_subsets, "test", "MMEB-eval"), layout.eval_root / "README.md")

    manifest = {
        "params": params,
        "train_subsets": layout.train_subsets,
        "eval_subsets": layout.eval_subsets,
        "rows": rows_written,
        "files": _count_files(layout),
    }
    _write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", manifest_path)
    return layout


def corpus_texts(layout: SyntheticLayout) -> list[str]:
    """Every distinct non-empty text in the train and eval parquet files, in first-seen order.

    Read back through the MMEB readers, so it is exactly what training and eval will tokenize.
    """
    seen: dict[str, None] = {}
    for subset in layout.train_subsets:
        df = read_train_subset(layout.train_root, subset)
        for col in ("qry", "pos_text", "neg_text"):
            if col in df.columns:
                seen.update(dict.fromkeys(df[col].to_list()))
    for subset in layout.eval_subsets:
        df = read_eval_subset(layout.eval_root, subset)
        seen.update(dict.fromkeys(df["qry_text"].to_list()))
        seen.update(dict.fromkeys(df["tgt_text"].explode().to_list()))
    return [t for t in seen if t]
