"""The global candidate table: every unique (text, image) training target, keyed by content.

UniME-V2's pool is global across the training subsets and deduplicated (paper digest §2): one row
per unique (pos_text, pos_image_path), so a class label shared by many rows is one candidate.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl


def candidate_key(text: str, image: str) -> str:
    return hashlib.blake2b(f"{text}\x1f{image}".encode(), digest_size=8).hexdigest()


def build_candidate_table(train: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """Unique positives as the pool: (candidates[cand_id, cand_key, text, image_path], pos index per row)."""
    keys = [candidate_key(t, p) for t, p in zip(train["pos_text"], train["pos_image_path"], strict=True)]
    first: dict[str, int] = {}
    texts, images = [], []
    pos_idx = np.empty(len(keys), dtype=np.int64)
    for row, (key, t, p) in enumerate(zip(keys, train["pos_text"], train["pos_image_path"], strict=True)):
        if key not in first:
            first[key] = len(texts)
            texts.append(t)
            images.append(p)
        pos_idx[row] = first[key]
    cands = pl.DataFrame(
        {
            "cand_id": np.arange(len(texts), dtype=np.int64),
            "cand_key": list(first),
            "text": texts,
            "image_path": images,
        },
        schema_overrides={"cand_key": pl.String, "text": pl.String, "image_path": pl.String},
    )
    return cands, pos_idx

