"""The retriever as an encoder: a checkpoint loaded on first use, its embeddings read through the cache."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from unime_assets.fingerprints import checkpoint_fingerprint
from unime_assets.retrieval.embedding_cache import (
    CacheStats,
    EmbeddingCache,
    image_digests,
    item_keys,
    namespace,
)


class Retriever:
    """The retriever checkpoint, loaded on first use: a warm cache never loads the model."""

    def __init__(self, path: str | os.PathLike):
        from unime_assets.models.loading import check_checkpoint_dir

        self.path = check_checkpoint_dir(path, "retriever")
        self.fingerprint = checkpoint_fingerprint(self.path)
        self._lm = None
        self.n_forward_items = 0  # items actually encoded by this object

    @property
    def dtype(self) -> str:
        from unime_assets.models.loading import default_dtype, pick_device

        return str(default_dtype(pick_device()))

    def encode(
        self, items: Sequence, image_root: str | os.PathLike, *, batch_size: int, desc: str, progress: bool
    ):
        from unime_assets.models import encoding
        from unime_assets.models.loading import load_model

        if self._lm is None:
            self._lm = load_model(self.path, role="retriever")
        lm = self._lm
        self.n_forward_items += len(items)
        images = encoding.ImageLoader(image_root)
        return encoding.encode_items(
            lm.model,
            lm.processor,
            items,
            images,
            lm.image_token,
            batch_size=batch_size,
            desc=desc,
            progress=progress,
        )


def as_retriever(retriever: str | os.PathLike | Retriever) -> Retriever:
    """A checkpoint path or an existing `Retriever` (shared so the model loads at most once)."""
    return retriever if isinstance(retriever, Retriever) else Retriever(retriever)


def encode_cached(
    items: Sequence,
    retriever: Retriever,
    image_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None,
    batch_size: int = 64,
    desc: str = "encode",
    progress: bool = True,
) -> tuple[np.ndarray, CacheStats]:
    """Retriever embeddings of `items` (models.encoding.Item); only items missing from the cache are encoded.

    cache_dir=None disables the cache (everything is encoded, duplicates once).
    """

    def compute(positions: list[int]) -> np.ndarray:
        sub = [items[i] for i in positions]
        return retriever.encode(sub, image_root, batch_size=batch_size, desc=desc, progress=progress)

    keys = item_keys(items, image_digests(image_root, cache_dir))
    if cache_dir is None:
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        emb = compute(list(first.values()))
        where = {key: j for j, key in enumerate(first)}
        out = emb[[where[key] for key in keys]] if len(first) != len(keys) else emb
        return out, CacheStats(len(keys), len(first), 0, len(first))
    cache = EmbeddingCache(cache_dir, namespace(retriever.fingerprint, dtype=retriever.dtype),
                           source={"model": str(retriever.path), "fingerprint": retriever.fingerprint})  # fmt: skip
    return cache.get_or_compute(keys, compute)


def items_of(texts: Sequence[str], images: Sequence[str]) -> list:
    from unime_assets.models.encoding import Item

    return [Item(t, p) for t, p in zip(texts, images, strict=True)]

