"""Image-text data of the shapes world for the generative pretraining of the tiny bases.

The paper's retriever (VLM2Vec) and embedder both start from a pretrained MLLM that has seen
image-text data; the embedded default's `pretrained_base` stands in for that with chat SFT on this
corpus: per image a description ("Describe the image." -> "A scarlet circle in the top left and ...",
colour and shape words replaced by a synonym at `synonym_rate`: world knowledge a real MLLM has) and
one generic visual question with its short answer (colour, shape, count, where, "Is there a ...?").
Its own random stream: no image is shared with the MMEB train or eval files and no MMEB prompt is used.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_assets.data.synthetic.subsets import COLOUR_SYNONYMS, SHAPE_SYNONYMS, VQA_COLOUR_SYNONYMS
from unime_assets.data.synthetic.world import (
    COLOUR_NAMES,
    COUNT_WORDS,
    POSITIONS,
    SHAPES,
    Obj,
    pick,
    rand_obj,
    rand_scene,
    scene,
    single_image,
    stable_hash,
)
from unime_assets.io import atomic_path

PRETRAIN_DIR, PRETRAIN_FILE = "pretrain", "corpus.parquet"
PRETRAIN_SCHEMA = pa.schema([(c, pa.string()) for c in ("image_path", "question", "answer", "kind")])
DESCRIBE = "Describe the image."
PRETRAIN_VERSION = 1  # bump when the corpus content changes


def _word(rng: np.random.Generator, word: str, tables: Sequence[dict[str, str]], rate: float) -> str:
    if float(rng.random()) >= rate:
        return word
    return tables[int(rng.integers(len(tables)))][word]


def _describe(rng: np.random.Generator, objs: Sequence[Obj], centred: bool, rate: float) -> str:
    parts = []
    for o in sorted(objs, key=lambda o: o.quad):
        c = _word(rng, o.colour, (COLOUR_SYNONYMS, VQA_COLOUR_SYNONYMS), rate)
        s = _word(rng, o.shape, (SHAPE_SYNONYMS,), rate)
        parts.append(f"a {c} {s}" if centred else f"a {c} {s} in the {POSITIONS[o.quad]}")
    text = " and ".join(parts) + "."
    return text[0].upper() + text[1:]


def _question(rng: np.random.Generator, objs: Sequence[Obj], centred: bool) -> tuple[str, str]:
    """One generic visual question about the image and its short answer."""
    kinds = ["colour", "shape", "count", "exists"] + ([] if centred else ["where"])
    kind = kinds[int(rng.integers(len(kinds)))]
    o = objs[int(rng.integers(len(objs)))]
    if kind == "colour" and Counter(x.shape for x in objs)[o.shape] == 1:
        return f"What color is the {o.shape}?", o.colour
    if kind in ("shape", "colour"):  # a colour question about an ambiguous shape asks for the shape
        return f"What shape is the {o.colour} object?", o.shape
    if kind == "count":
        return "How many shapes are in the image?", COUNT_WORDS[len(objs) - 1]
    if kind == "where":
        return f"Where is the {o.colour} {o.shape}?", POSITIONS[o.quad]
    if float(rng.random()) < 0.5:  # exists: an object that is there, or one with one attribute changed
        return f"Is there a {o.colour} {o.shape}?", "Yes"
    present = {(x.colour, x.shape) for x in objs}
    while True:
        c = pick(rng, COLOUR_NAMES) if float(rng.random()) < 0.5 else o.colour
        s = pick(rng, SHAPES) if c == o.colour else o.shape
        if (c, s) not in present:
            return f"Is there a {c} {s}?", "No"


def generate_pretraining(out_root: str | Path, *, n_images: int = 1500, image_size: int = 56, seed: int = 0,
                         synonym_rate: float = 0.2) -> Path:  # fmt: skip
    """Write `<out_root>/pretrain/corpus.parquet` (image_path, question, answer, kind; 2 rows per image)
    and its images; idempotent like `generate` (a manifest with the same params means done)."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    out = Path(out_root) / PRETRAIN_DIR
    params = {"version": PRETRAIN_VERSION, "n_images": n_images, "image_size": image_size, "seed": seed,
              "synonym_rate": synonym_rate}  # fmt: skip
    manifest = out / "manifest.json"
    try:
        if json.loads(manifest.read_text())["params"] == params and (out / PRETRAIN_FILE).is_file():
            return out / PRETRAIN_FILE
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, stable_hash("__pretrain__"), 2]))
    rows = []
    for i in range(n_images):
        centred = float(rng.random()) < 0.25
        objs = [rand_obj(rng)] if centred else rand_scene(rng, int(rng.integers(1, 5)))
        img = single_image(rng, image_size, objs[0]) if centred else scene(rng, image_size, objs)
        rel = f"images/pretrain_{i}.png"
        with atomic_path(out / rel) as tmp:
            img.save(tmp, format="PNG")
        rows.append({"image_path": rel, "question": DESCRIBE, "kind": "describe",
                     "answer": _describe(rng, objs, centred, synonym_rate)})  # fmt: skip
        q, a = _question(rng, objs, centred)
        rows.append({"image_path": rel, "question": q, "answer": a, "kind": "vqa"})
    with atomic_path(out / PRETRAIN_FILE) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=PRETRAIN_SCHEMA), tmp)
    with atomic_path(manifest) as tmp:  # last: its presence means the corpus is complete
        tmp.write_text(json.dumps({"params": params, "rows": len(rows)}, indent=2) + "\n")
    return out / PRETRAIN_FILE


def pretraining_texts(corpus_file: str | Path) -> list[str]:
    """The questions and answers of the corpus (the tiny tokenizer is trained on them too)."""
    t = pq.read_table(corpus_file, columns=["question", "answer"]).to_pydict()
    return list(dict.fromkeys(t["question"] + t["answer"]))
