"""The embedded default's data: a tiny, deterministic, learnable shapes world in the real MMEB on-disk formats.

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

The train split holds, in counted amounts, what UniME-V2 is built for: false negatives in the global
pool (label synonyms, the same label written by another subset, paraphrased captions, other images
and crops of the same object), one-attribute hard negatives and easy negatives; the ground truth is
written beside it (`truth`). The eval split keeps the canonical words.

Modules: `world` (palette, shapes, drawing), `subsets` (templates and one row generator per
subset; synonyms and paraphrases), `writer` (`generate`: the files, their README cards and a
manifest), `truth` (the ground-truth sidecar: `TruthIndex`, `relation`, `phenomena_counts`),
`pretraining` (the image-text corpus the tiny bases are pretrained on).
"""

from unime_assets.data.synthetic.pretraining import generate_pretraining, pretraining_texts
from unime_assets.data.synthetic.subsets import (
    ALL_CAPTIONS,
    CANONICAL,
    CAPTION_PARAPHRASES,
    GENERATORS,
    IMAGE_TOKEN,
    caption,
)
from unime_assets.data.synthetic.truth import RELATIONS, TruthIndex, relation
from unime_assets.data.synthetic.world import COLOUR_NAMES, COLOURS, COUNT_WORDS, POSITIONS, SHAPES
from unime_assets.data.synthetic.writer import GENERATOR_VERSION, SyntheticLayout, corpus_texts, generate

__all__ = [
    "ALL_CAPTIONS",
    "CANONICAL",
    "CAPTION_PARAPHRASES",
    "COLOURS",
    "COLOUR_NAMES",
    "COUNT_WORDS",
    "GENERATORS",
    "GENERATOR_VERSION",
    "IMAGE_TOKEN",
    "POSITIONS",
    "RELATIONS",
    "SHAPES",
    "SyntheticLayout",
    "TruthIndex",
    "caption",
    "corpus_texts",
    "generate",
    "generate_pretraining",
    "pretraining_texts",
    "relation",
]
