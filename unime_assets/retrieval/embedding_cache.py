"""On-disk cache of embeddings, keyed by model, item content and encoding version.

Re-materializing the candidate index or a partition's pool with unchanged inputs encodes nothing;
a changed checkpoint gets a fresh namespace (nothing reused) and a changed item only re-encodes
that item.

Keys (all from `unime_assets.fingerprints`, the project's one rule):
- namespace = hash(checkpoint fingerprint, encoding version, dtype, image resize): one folder each;
- item key = hash(text, image bytes): an image rewritten in place, even with its size and mtime
  kept, changes its key. The bytes of each image are read once and then remembered by
  (path, size, mtime) in `image-digests.parquet` beside the namespaces, so a warm lookup of a
  million images costs a `stat` each.

Layout of one namespace folder: shards `shard-<id>.npy` (float32, (n, D)) with their key tables
`keys-<id>.parquet` (row i of the table is row i of the shard). Every call that encodes something
appends pairs as it goes (npy first, then keys, each written atomically, so a key never points at a
missing row, and a killed run keeps what it encoded); when more than `max_shards` pairs exist they
are merged into one. Several processes (one per partition) may share a folder: appends and reads
hold a shared `flock`, merging an exclusive one taken without waiting, so a busy cache merges later
instead of blocking.

Garbage collection (`stale_namespaces`, `orphan_shards`; run by `unime_assets.maintenance`): each
namespace records the checkpoint it was made from (`namespace.json`: path and fingerprint) and when
it was last used (`.last_used`). A namespace whose checkpoint was retrained or deleted, or that was
not used for `max_idle` seconds, is stale; so is a shard without its key table (a merge killed
between its two deletions).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from unime_assets.fingerprints import ImageDigests, hash_fields, item_digest
from unime_assets.io import atomic_path

# Bump when pooling, normalisation or text preprocessing of `models/encoding.py` changes.
ENCODING_VERSION = "last-token-l2norm-v1"
IMAGE_DIGESTS_FILE = "image-digests.parquet"
SOURCE_FILE = "namespace.json"  # {"model": checkpoint path, "fingerprint": its fingerprint}
USED_FILE = ".last_used"  # its mtime: the namespace's last lookup or append


def namespace(
    model_fp: str, *, dtype: str, resize: int | None = None, version: str = ENCODING_VERSION
) -> str:
    """Folder name for one (model, encoding version, precision, image size): embeddings differ across them."""
    return hash_fields("embedding-namespace", model_fp, version, dtype, resize)[:32]


def image_digests(image_root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ImageDigests:
    """Image content digests for `image_root`, kept in `cache_dir` across processes when given."""
    return ImageDigests(image_root, Path(cache_dir) / IMAGE_DIGESTS_FILE if cache_dir is not None else None)


def item_keys(items: Sequence, digests: ImageDigests) -> list[str]:
    """Cache keys of `models.encoding.Item`s (anything with `.text` and `.image`), by content."""
    keys = [item_digest(it.text, digests(it.image)) for it in items]
    digests.save()
    return keys


@dataclass
class CacheStats:
    n_items: int  # requested, duplicates included
    n_unique: int
    n_cached: int  # unique items found in the cache
    n_encoded: int  # unique items computed by this call

    def as_dict(self, prefix: str = "") -> dict[str, int]:
        return {f"{prefix}{k}": v for k, v in vars(self).items()}


class EmbeddingCache:
    """Embeddings of one namespace under `root/<namespace>/`; see the module docstring."""

    def __init__(self, root: str | os.PathLike, namespace: str, *, max_shards: int = 8,
                 source: Mapping[str, str] | None = None):  # fmt: skip
        if max_shards < 1:
            raise ValueError(f"max_shards must be >= 1, got {max_shards}")
        self.dir = Path(root) / namespace
        self.max_shards = max_shards
        self.source = dict(source) if source else None  # the checkpoint it encodes with (for GC)

    def mark_used(self) -> None:
        """Record the use (and, once, the source checkpoint) for garbage collection."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.source and not (self.dir / SOURCE_FILE).is_file():
            with atomic_path(self.dir / SOURCE_FILE) as tmp:
                tmp.write_text(json.dumps(self.source))
        (self.dir / USED_FILE).touch()

    # --- locking ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, exclusive: bool, wait: bool = True) -> Iterator[bool]:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): single-process use only
            yield True
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as fh:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(fh, flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- reading ---------------------------------------------------------------------------------
    def _key_table(self) -> pl.DataFrame:
        frames = []
        for kf in sorted(self.dir.glob("keys-*.parquet")):
            shard = kf.name[len("keys-") : -len(".parquet")]
            keys = pl.read_parquet(kf, columns=["key"])
            frames.append(
                keys.with_columns(pl.lit(shard).alias("shard"), pl.int_range(pl.len()).alias("row"))
            )
        if not frames:
            return pl.DataFrame(schema={"key": pl.String, "shard": pl.String, "row": pl.Int64})
        # Two processes may have encoded the same item: any copy will do.
        return pl.concat(frames).unique(subset="key", keep="first", maintain_order=True)

    def __len__(self) -> int:
        if not self.dir.is_dir():
            return 0
        with self._lock(exclusive=False):
            return self._key_table().height

    def n_shards(self) -> int:
        return len(list(self.dir.glob("keys-*.parquet"))) if self.dir.is_dir() else 0

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """(embeddings (len(keys), D) with zeros where missing, or None when nothing is cached; found mask)."""
        found = np.zeros(len(keys), dtype=bool)
        if not self.dir.is_dir() or not keys:
            return None, found
        with self._lock(exclusive=False):
            table = self._key_table()
            if table.is_empty():
                return None, found
            req = pl.DataFrame({"key": list(keys), "pos": np.arange(len(keys), dtype=np.int64)})
            hits = req.join(table, on="key", how="inner")
            if hits.is_empty():
                return None, found
            out: np.ndarray | None = None
            for (shard,), part in hits.group_by(["shard"]):
                # mmap: only the requested rows are read, whatever the size of the shard.
                arr = np.load(self.dir / f"shard-{shard}.npy", mmap_mode="r")
                if out is None:
                    out = np.zeros((len(keys), arr.shape[1]), dtype=np.float32)
                rows = part["row"].to_numpy()
                order = np.argsort(rows)  # sorted reads are sequential on disk
                out[part["pos"].to_numpy()[order]] = arr[rows[order]]
            found[hits["pos"].to_numpy()] = True
            return out, found

    # --- writing ---------------------------------------------------------------------------------
    def add(self, keys: Sequence[str], emb: np.ndarray) -> None:
        """Append one shard; merges shards when there are more than `max_shards`."""
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(keys):
            raise ValueError(f"cache add: {len(keys)} keys but embeddings of shape {emb.shape}")
        if not len(keys):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        sid = uuid.uuid4().hex[:16]
        with self._lock(exclusive=False):
            with atomic_path(self.dir / f"shard-{sid}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, emb)
            with atomic_path(self.dir / f"keys-{sid}.parquet") as tmp:
                pl.DataFrame({"key": list(keys)}).write_parquet(tmp)
        if self.n_shards() > self.max_shards:
            self.compact()

    def compact(self, full: bool = False) -> bool:
        """Merge shards; False (nothing done) while another process reads or writes.

        By default only the smallest shards are merged, down to max_shards // 2 + 1 files, so the big
        shard of a first full encoding is not rewritten every time a partition appends a few rows.
        """
        with self._lock(exclusive=True, wait=False) as got:
            if not got:
                return False
            table = self._key_table()
            sizes = table.group_by("shard").len().sort(["len", "shard"])
            keep_n = 0 if full else max(self.max_shards // 2, 1)
            merge = sizes["shard"].to_list()[: max(sizes.height - keep_n, 0)]
            if len(merge) <= 1:
                return True
            part_table = table.filter(pl.col("shard").is_in(merge))
            dim = np.load(self.dir / f"shard-{merge[0]}.npy", mmap_mode="r").shape[1]
            sid = uuid.uuid4().hex[:16]
            with atomic_path(self.dir / f"shard-{sid}.npy") as tmp:
                out = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float32, shape=(part_table.height, dim)
                )
                # Copy shard by shard so memory stays one shard, not the whole cache.
                for (shard,), part in part_table.with_row_index("dest").group_by(
                    ["shard"], maintain_order=True
                ):
                    arr = np.load(self.dir / f"shard-{shard}.npy", mmap_mode="r")
                    out[part["dest"].to_numpy()] = arr[part["row"].to_numpy()]
                out.flush()
                del out
            with atomic_path(self.dir / f"keys-{sid}.parquet") as tmp:
                part_table.select("key").write_parquet(tmp)
            # Old key tables go first: a crash in between leaves orphan shards, never dangling keys.
            for shard in merge:
                (self.dir / f"keys-{shard}.parquet").unlink()
            for shard in merge:
                (self.dir / f"shard-{shard}.npy").unlink(missing_ok=True)
            return True

    def get_or_compute(
        self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray], *, write_every: int = 2048
    ) -> tuple[np.ndarray, CacheStats]:
        """Embeddings for `keys`, calling `compute(positions)` only for the first position of each missing key.

        `compute` returns (len(positions), D) float32 rows for those positions of `keys`. Missing items
        are computed `write_every` at a time and each batch is stored before the next starts, so a
        killed run loses at most one batch.
        """
        if not len(keys):
            raise ValueError("embedding cache: no keys")
        self.mark_used()
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        uniq = list(first)
        cached, found = self.lookup(uniq)
        missing = [first[k] for k, hit in zip(uniq, found, strict=True) if not hit]
        parts: list[np.ndarray] = []
        for lo in range(0, len(missing), max(write_every, 1)):
            batch = missing[lo : lo + max(write_every, 1)]
            new = np.asarray(compute(batch), dtype=np.float32)
            if new.ndim != 2 or new.shape[0] != len(batch):
                raise ValueError(f"embedding cache: compute returned shape {new.shape} for {len(batch)} items")
            dim_ref = cached if cached is not None else (parts[0] if parts else None)
            if dim_ref is not None and dim_ref.shape[1] != new.shape[1]:
                raise ValueError(f"embedding cache {self.dir}: cached dim {dim_ref.shape[1]} != new {new.shape[1]}")
            self.add([keys[i] for i in batch], new)
            parts.append(new)
        new_all = np.concatenate(parts) if parts else None
        dim = cached.shape[1] if cached is not None else new_all.shape[1]  # type: ignore[union-attr]
        uniq_emb = cached if cached is not None else np.zeros((len(uniq), dim), dtype=np.float32)
        if new_all is not None:
            uniq_emb[~found] = new_all  # `missing` follows `uniq` order, as does ~found
        if len(uniq) == len(keys):  # no duplicates: `uniq` is `keys` in order, skip the copy
            out = uniq_emb
        else:
            where = {k: j for j, k in enumerate(uniq)}
            out = uniq_emb[np.fromiter((where[k] for k in keys), dtype=np.int64, count=len(keys))]
        stats = CacheStats(len(keys), len(uniq), int(found.sum()), len(missing))
        return out, stats


# --- garbage collection ---------------------------------------------------------------------------


def _last_used(d: Path) -> float:
    used = d / USED_FILE
    if used.exists():
        return used.stat().st_mtime
    return max((p.stat().st_mtime for p in d.iterdir()), default=d.stat().st_mtime)


def _source_changed(d: Path) -> str | None:
    """Why the namespace's checkpoint no longer exists as it was, or None (unchanged or unknown)."""
    from unime_assets.fingerprints import checkpoint_fingerprint

    try:
        src = json.loads((d / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    model = Path(src.get("model", ""))
    if not model.is_dir():
        return f"its checkpoint {model} is gone"
    try:
        if checkpoint_fingerprint(model) != src.get("fingerprint"):
            return f"its checkpoint {model} was retrained"
    except OSError:
        return f"its checkpoint {model} is unreadable"
    return None


def stale_namespaces(root: str | os.PathLike, *, max_idle: float, min_idle: float = 3600.0,
                     now: float | None = None) -> list[tuple[Path, str]]:  # fmt: skip
    """(namespace folder, reason) for each namespace whose checkpoint changed and that was not used
    for `min_idle` seconds (a running evaluation may still be writing), or unused for `max_idle`."""
    root, now = Path(root), time.time() if now is None else now
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
        idle = now - _last_used(d)
        if idle > max_idle:
            out.append((d, f"not used for {idle / 86400:.1f} days"))
        elif idle > min_idle and (why := _source_changed(d)):
            out.append((d, why))
    return out


def orphan_shards(namespace_dir: str | os.PathLike, *, min_age: float = 3600.0, now: float | None = None) -> list[Path]:
    """Embedding shards without their key table (no key points at them), older than `min_age` seconds."""
    d, now = Path(namespace_dir), time.time() if now is None else now
    return [p for p in sorted(d.glob("shard-*.npy"))
            if not (d / f"keys-{p.name[len('shard-'):-len('.npy')]}.parquet").exists()
            and now - p.stat().st_mtime > min_age]  # fmt: skip
