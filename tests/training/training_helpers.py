"""A small `training_set` table built straight from the embedded default's train split (no retrieval,
judging or mining): negatives are other rows' positives, judge scores are seeded random numbers
with the positive on top. Enough to exercise training, launch, resume and registration."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from unime_assets.training.data import TRAINING_SET_SCHEMA


def small_training_set(settings, subsets=("SynColor", "SynCaps_t2i"), per_subset: int = 6, k: int = 4,
                       seed: int = 0) -> pl.DataFrame:  # fmt: skip
    rng = random.Random(seed)
    frames = []
    for name in subsets:
        path = next((Path(settings.train_root) / name).glob("*.parquet"))
        frames.append(pl.read_parquet(path).head(per_subset).with_columns(pl.lit(name).alias("subset")))
    train = pl.concat(frames)
    rows = train.to_dicts()
    out = []
    for i, r in enumerate(rows):
        others = [j for j in range(len(rows)) if j != i]
        negs = [rows[j] for j in rng.sample(others, k)]
        out.append({
            "pair_id": f"p{i}", "subset": r["subset"], "qry": r["qry"], "qry_image_path": r["qry_image_path"],
            "pos_text": r["pos_text"], "pos_image_path": r["pos_image_path"], "pos_score": 0.9,
            "neg_texts": [n["pos_text"] for n in negs],
            "neg_image_paths": [n["pos_image_path"] for n in negs],
            "neg_scores": [round(rng.uniform(0.05, 0.8), 3) for _ in negs],
            "strategy": "test", "fallback": False,
        })  # fmt: skip
    return pl.DataFrame(out, schema=TRAINING_SET_SCHEMA)
