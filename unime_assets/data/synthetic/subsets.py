"""The synthetic subsets: MMEB's real prompt templates and one row generator per subset.

Each generator draws a subset's rows (and writes its images) from the subset's own RNG; classification,
VQA, retrieval t2i / i2t / i2i and grounding, with OOD subsets that exist only in eval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from unime_assets.data.synthetic.world import (
    COLOUR_NAMES,
    COUNT_WORDS,
    POSITIONS,
    SHAPES,
    Obj,
    Split,
    quadrant_box,
    rand_obj,
    rand_scene,
    scene,
    single_image,
)
from unime_assets.io import atomic_path

IMAGE_TOKEN = "<|image_1|>"


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


# Train-only phenomena (the eval keeps the canonical words, so its numbers stay comparable). Label
# synonyms and caption paraphrases put false negatives into the global candidate pool: a pool entry
# that answers a query correctly but is not that query's annotated positive (data/synthetic/truth.py).
COLOUR_SYNONYMS: dict[str, str] = {
    "red": "scarlet", "green": "emerald", "blue": "azure", "yellow": "golden", "purple": "violet",
    "orange": "amber", "white": "ivory", "cyan": "aqua",
}  # fmt: skip
# SynVQA's annotators use other colour words than SynColor's: its synonyms are false negatives for
# SynColor queries that exist only in another subset (and vice versa).
VQA_COLOUR_SYNONYMS: dict[str, str] = {
    "red": "crimson", "green": "jade", "blue": "cobalt", "yellow": "lemon", "purple": "plum",
    "orange": "tangerine", "white": "snow", "cyan": "turquoise",
}  # fmt: skip
SHAPE_SYNONYMS: dict[str, str] = {"circle": "disc", "square": "box", "triangle": "wedge"}
COUNT_SYNONYMS: dict[str, str] = {"one": "1", "two": "2", "three": "3", "four": "4"}
CAPTION_PARAPHRASES: tuple[str, ...] = (
    "A {c} {s} at the {p}.", "There is a {c} {s} in the {p}.", "In the {p} there is a {c} {s}.",
)  # fmt: skip
# Any label word -> its canonical word (a canonical word maps to itself).
CANONICAL: dict[str, str] = {
    syn: word for table in (COLOUR_SYNONYMS, VQA_COLOUR_SYNONYMS, SHAPE_SYNONYMS, COUNT_SYNONYMS)
    for word, syn in table.items()
} | {w: w for w in (*COLOUR_NAMES, *SHAPES, *COUNT_WORDS)}  # fmt: skip
# Per train subset and label kind: the synonym that a `synonym_rate` share of its labels is written as.
SYNONYMS: dict[str, dict[str, dict[str, str]]] = {
    "SynColor": {"colour": COLOUR_SYNONYMS}, "SynVQA": {"colour": VQA_COLOUR_SYNONYMS},
    "SynShape": {"shape": SHAPE_SYNONYMS}, "SynCount": {"count": COUNT_SYNONYMS},
}  # fmt: skip
_KIND_OF_UNIVERSE: dict[tuple[str, ...], str] = {
    COLOUR_NAMES: "colour", SHAPES: "shape", COUNT_WORDS: "count", POSITIONS: "position",
}  # fmt: skip


EVAL_FILE = "test-00000-of-00001.parquet"
# SynVQA mirrors A-OKVQA, whose train file carries neg_text/neg_image_path.
NEG_SUBSETS = frozenset({"SynVQA"})


Row = dict[str, object]


@dataclass
class Ctx:
    train_root: Path
    eval_image_root: Path
    image_size: int
    n_candidates: int
    synonym_rate: float = 0.0  # share of train label rows whose label is written as its synonym
    paraphrase_rate: float = 0.0  # share of train captions written with a paraphrase template
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


def _train_row(qry: str, qry_img: str, pos: str, pos_img: str, neg: str | None = None, *,
               want: Sequence[str], variant: str = "canonical") -> Row:  # fmt: skip
    """A train row with what the generator knows about it under `_truth` (dropped before the parquet
    is written): `want`, what any correct target of the query means (a type, then attributes);
    `variant`, how the positive is written (canonical, synonym, paraphrase)."""
    row: Row = {"qry": qry, "qry_image_path": qry_img, "pos_text": pos, "pos_image_path": pos_img}
    if neg is not None:
        row |= {"neg_text": neg, "neg_image_path": ""}
    row["_truth"] = {"want": list(want), "variant": variant}
    return row


def _eval_row(qry: str, qry_img: str, texts: list[str], imgs: list[str]) -> Row:
    assert len(texts) == len(imgs) and texts, "candidate lists must be non-empty and aligned"
    return {"qry_text": qry, "qry_img_path": qry_img, "tgt_text": texts, "tgt_img_path": imgs}


def _gt_first(label: str, universe: Sequence[str]) -> list[str]:
    return [label, *(u for u in universe if u != label)]


# A "text item": (query text, query image path, target label, negative label, candidate universe).
_TextItem = tuple[str, str, str, str | None, Sequence[str]]


def _text_target(make: Callable[[Ctx, str, np.random.Generator, int, Split], _TextItem]):
    """Subsets whose target is a label text: classification, VQA, image->text with a closed vocabulary."""

    def gen(ctx: Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
        rows: list[Row] = []
        for i in range(n):
            qry, img, label, neg, universe = make(ctx, subset, rng, i, split)
            if split == "train":
                kind = _KIND_OF_UNIVERSE[tuple(universe)]
                text, variant = label, "canonical"
                synonyms = SYNONYMS.get(subset, {}).get(kind)
                if synonyms and float(rng.random()) < ctx.synonym_rate:
                    text, variant = synonyms[label], "synonym"
                rows.append(_train_row(qry, img, text, "", neg if subset in NEG_SUBSETS else None,
                                       want=[kind, label], variant=variant))  # fmt: skip
            else:
                cands = _gt_first(label, universe)
                rows.append(_eval_row(qry, img, cands, [""] * len(cands)))
        return rows

    return gen


def _classify(prompt: str, attr: Literal["colour", "shape"]):
    universe = COLOUR_NAMES if attr == "colour" else SHAPES

    def make(ctx: Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
        obj = rand_obj(rng)
        path = ctx.save(subset, split, f"image_{i}", single_image(rng, ctx.image_size, obj))
        return prompt, path, getattr(obj, attr), None, universe

    return _text_target(make)


def _vqa_colour(ctx: Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
    # Two objects with different shapes AND colours, so "the {shape}" is unique and the negative differs.
    shapes = rng.choice(len(SHAPES), size=2, replace=False)
    colours = rng.choice(len(COLOUR_NAMES), size=2, replace=False)
    quads = rng.choice(4, size=2, replace=False)
    objs = [Obj(COLOUR_NAMES[int(colours[k])], SHAPES[int(shapes[k])], int(quads[k])) for k in range(2)]
    asked = int(rng.integers(2))
    path = ctx.save(subset, split, f"image_{i}", scene(rng, ctx.image_size, objs))
    qry = vqa_qry(f"What color is the {objs[asked].shape}?")
    return qry, path, objs[asked].colour, objs[1 - asked].colour, COLOUR_NAMES


def _vqa_count(ctx: Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
    k = int(rng.integers(1, 5))
    quads = rng.choice(4, size=k, replace=False)
    objs = [replace(rand_obj(rng), quad=int(q)) for q in quads]
    path = ctx.save(subset, split, f"image_{i}", scene(rng, ctx.image_size, objs))
    return vqa_qry("How many shapes are in the image?"), path, COUNT_WORDS[k - 1], None, COUNT_WORDS


def _vqa_where(ctx: Ctx, subset: str, rng: np.random.Generator, i: int, split: Split) -> _TextItem:
    obj = rand_obj(rng)
    path = ctx.save(subset, split, f"image_{i}", scene(rng, ctx.image_size, [obj]))
    qry = vqa_qry(f"Where is the {obj.colour} {obj.shape}?")
    return qry, path, POSITIONS[obj.quad], None, POSITIONS


def _caption_of(o: Obj) -> str:
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


def _gen_t2i(ctx: Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
    if split == "train":
        rows: list[Row] = []
        for i in range(n):
            obj = rand_obj(rng)
            path = ctx.save(subset, split, f"image_{i}", scene(rng, ctx.image_size, [obj]))
            rows.append(_train_row(t2i_qry(_caption_of(obj)), "", IMAGE_TGT, path,
                                   want=["scene", obj.colour, obj.shape, POSITIONS[obj.quad]]))  # fmt: skip
        return rows
    objs = [rand_obj(rng) for _ in range(n)]
    pool: list[Hashable] = list(objs)
    # keys are whole objects; distractors must differ in caption, i.e. in the object itself
    _grow_pool(rng, pool, n, ctx.n_candidates - 1, lambda: rand_obj(rng))
    gallery = [
        ctx.save(subset, split, f"image_{j}", scene(rng, ctx.image_size, [o])) for j, o in enumerate(pool)
    ]
    rows = []
    for i in range(n):
        cands = [gallery[i]] + [gallery[j] for j in _other_keys(rng, pool, i, ctx.n_candidates - 1)]
        rows.append(_eval_row(t2i_qry(_caption_of(objs[i])), "", [IMAGE_TGT] * len(cands), cands))
    return rows


def _gen_i2t(ctx: Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
    rows: list[Row] = []
    for i in range(n):
        obj = rand_obj(rng)
        path = ctx.save(subset, split, f"image_{i}", scene(rng, ctx.image_size, [obj]))
        cap = _caption_of(obj)
        if split == "train":
            variant = "canonical"
            if float(rng.random()) < ctx.paraphrase_rate:
                template = CAPTION_PARAPHRASES[int(rng.integers(len(CAPTION_PARAPHRASES)))]
                cap, variant = template.format(c=obj.colour, s=obj.shape, p=POSITIONS[obj.quad]), "paraphrase"
            rows.append(_train_row(I2T_QRY, path, cap, "", want=["caption", obj.colour, obj.shape,
                                                                 POSITIONS[obj.quad]], variant=variant))  # fmt: skip
        else:
            others = [c for c in ALL_CAPTIONS if c != cap]
            picks = rng.choice(len(others), size=ctx.n_candidates - 1, replace=False)
            cands = [cap] + [others[int(j)] for j in picks]
            rows.append(_eval_row(I2T_QRY, path, cands, [""] * len(cands)))
    return rows


def _gen_similar(ctx: Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
    assert split == "eval", "SynSimilar is OOD (eval only)"
    queries = [rand_obj(rng) for _ in range(n)]
    # GT: same colour and shape, another quadrant
    gts = [replace(q, quad=int((q.quad + 1 + rng.integers(3)) % 4)) for q in queries]
    gallery_objs: list[Obj] = list(gts)
    keys: list[Hashable] = [(o.colour, o.shape) for o in gts]
    extra: list[Obj] = []

    def new_key() -> Hashable:
        extra.append(rand_obj(rng))
        return (extra[-1].colour, extra[-1].shape)

    _grow_pool(rng, keys, n, ctx.n_candidates - 1, new_key)
    gallery_objs += extra
    q_paths = [
        ctx.save(subset, split, f"query_{i}", scene(rng, ctx.image_size, [o])) for i, o in enumerate(queries)
    ]
    g_paths = [
        ctx.save(subset, split, f"image_{j}", scene(rng, ctx.image_size, [o]))
        for j, o in enumerate(gallery_objs)
    ]
    rows: list[Row] = []
    for i in range(n):
        cands = [g_paths[i]] + [g_paths[j] for j in _other_keys(rng, keys, i, ctx.n_candidates - 1)]
        rows.append(_eval_row(I2I_QRY, q_paths[i], [IMAGE_TGT] * len(cands), cands))
    return rows


def _grounding(refer: bool):
    """Scene of 2*image_size with 3 objects; the target is the crop of the named object's quadrant."""

    def qry_of(obj: Obj) -> str:
        return (
            refer_qry(obj.colour, POSITIONS[obj.quad]) if refer else ground_qry(f"{obj.colour} {obj.shape}")
        )

    def key_of(obj: Obj) -> Hashable:
        # an other-scene crop matching everything the query names would be a second GT
        return obj.colour if refer else (obj.colour, obj.shape)

    def crops(
        ctx: Ctx, subset: str, split: Split, stem: str, img: Image.Image, objs: Sequence[Obj]
    ) -> list[str]:
        size = 2 * ctx.image_size
        return [
            ctx.save(
                subset, split, f"{stem}_object_{o.colour}_{o.shape}", img.crop(quadrant_box(o.quad, size))
            )
            for o in objs
        ]

    def gen(ctx: Ctx, subset: str, rng: np.random.Generator, n: int, split: Split) -> list[Row]:
        size = 2 * ctx.image_size
        scenes: list[list[Obj]] = []
        targets: list[int] = []
        for _ in range(n):
            scenes.append(rand_scene(rng, 3))
            targets.append(int(rng.integers(3)))
        rows: list[Row] = []
        if split == "train":
            for i, (objs, t) in enumerate(zip(scenes, targets, strict=True)):
                img = scene(rng, size, objs)
                scene_path = ctx.save(subset, split, f"image_{i}", img)
                (crop_path,) = crops(ctx, subset, split, f"image_{i}", img, [objs[t]])
                rows.append(_train_row(qry_of(objs[t]), scene_path, CROP_TGT, crop_path,
                                       want=["crop", objs[t].colour, objs[t].shape]))  # fmt: skip
            return rows

        # Extra scenes (never queried) until each row has enough other-scene crops with another key.
        # Colours are distinct within a scene, so exactly one crop of a scene shares the GT key.
        need_other = max(0, ctx.n_candidates - 3)
        counts = Counter(key_of(o) for s in scenes for o in s)

        def short() -> bool:
            total = 3 * len(scenes)
            return any(total - 3 - (counts[key_of(scenes[i][targets[i]])] - 1) < need_other for i in range(n))

        while n and short():
            scenes.append(rand_scene(rng, 3))
            counts.update(key_of(o) for o in scenes[-1])

        scene_paths: list[str] = []
        crop_paths: list[list[str]] = []
        for j, objs in enumerate(scenes):
            img = scene(rng, size, objs)
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


_Gen = Callable[[Ctx, str, np.random.Generator, int, Split], list[Row]]
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
