"""Content fingerprints: the one rule behind every cache and shard key.

- `hash_fields(*fields)`: sha256 over length-prefixed UTF-8 fields, so ("ab", "c") and ("a", "bc")
  differ; every key in the project is built from it.
- `file_digest(path)`: sha256 of a file's bytes. Above `FULL_HASH_MAX_BYTES` a file is sampled (its
  size, its safetensors header and 64 evenly spread 1 MiB blocks): a 15 GB 7B checkpoint costs a
  second, and retraining changes every weight, so a sampled block always differs. Memoised per
  (path, size, mtime) in the process.
- `checkpoint_fingerprint(dir)`: every non-hidden file of a checkpoint directory, recursively (config,
  weights, tokenizer, chat template, image processor), by relative path and `file_digest`. The
  `checkpoints/` folder of a training output (DeepSpeed resume states) is not part of the model.
- `ImageDigests`: content digests of images under a root, each file read once and then remembered
  by (path, size, mtime), optionally across processes in a parquet file next to a cache. The digest
  is of the bytes: the same image under two paths has one digest, a touched file keeps it, and a
  replaced one gets a new one (a replacement that keeps size and mtime to the nanosecond is the one
  case the memo cannot see).
- `item_digest(text, image_digest)`: one (text, image) item, by content.
- `files_stat_fingerprint(files)`: names, sizes and mtimes only, for change detection of large
  source folders where reading every byte on each schedule tick would be too slow.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from pathlib import Path

FULL_HASH_MAX_BYTES = 256 * 2**20  # files up to this size are hashed whole
SAMPLE_BLOCK = 2**20
SAMPLE_BLOCKS = 64
RESUME_STATES_DIR = "checkpoints"  # training/loop.py's resume folder: not part of the model

_file_memo: dict[tuple, str] = {}


def _feed(h, fields: Iterable[object]) -> None:
    for f in fields:
        b = f if isinstance(f, bytes) else str(f).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)


def hash_fields(*fields: object) -> str:
    """sha256 hex of length-prefixed fields (str() of non-bytes); the project's one key rule."""
    h = hashlib.sha256()
    _feed(h, fields)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of the file (sampled above FULL_HASH_MAX_BYTES, see the module docstring)."""
    p = Path(path)
    memo_key = (*_stat_key(p), FULL_HASH_MAX_BYTES, SAMPLE_BLOCK, SAMPLE_BLOCKS)
    if memo_key in _file_memo:
        return _file_memo[memo_key]
    size = memo_key[1]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        if size <= FULL_HASH_MAX_BYTES:
            for block in iter(lambda: fh.read(SAMPLE_BLOCK), b""):
                h.update(block)
        else:
            h.update(b"sampled:%d:" % size)
            if p.suffix == ".safetensors":  # the header names, shapes and offsets of every tensor
                (n,) = struct.unpack("<Q", fh.read(8))
                h.update(fh.read(min(n, 100 * 2**20)))
            step = max((size - SAMPLE_BLOCK) // (SAMPLE_BLOCKS - 1), 1)
            for i in range(SAMPLE_BLOCKS):
                fh.seek(max(min(i * step, size - SAMPLE_BLOCK), 0))
                h.update(fh.read(SAMPLE_BLOCK))
    digest = h.hexdigest()
    _file_memo[memo_key] = digest
    return digest


def _model_files(root: Path) -> list[Path]:
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if not p.is_file() or any(part.startswith(".") for part in rel) or rel[0] == RESUME_STATES_DIR:
            continue
        out.append(p)
    return sorted(out)


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of a checkpoint directory: a retrained model or a changed template gives a new value."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint fingerprint: {root} is not a checkpoint directory")
    files = _model_files(root)
    if not files:
        raise FileNotFoundError(f"checkpoint fingerprint: {root} has no files")
    return hash_fields("checkpoint-v2", *(x for f in files for x in (f.relative_to(root).as_posix(), file_digest(f))))


class ImageDigests:
    """Content digest of images given by path relative to `root` ("" for an item without image).

    `cache_file` (a parquet file) keeps the digests across processes: a warm lookup is one `stat`.
    """

    def __init__(self, root: str | os.PathLike, cache_file: str | os.PathLike | None = None):
        self.root = Path(root)
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._by_rel: dict[str, str] = {}
        self._stored: dict[tuple[str, int, int], str] = {}
        self._new = 0
        if self.cache_file is not None and self.cache_file.is_file():
            import polars as pl

            try:
                t = pl.read_parquet(self.cache_file)
                self._stored = {(p, s, m): d for p, s, m, d in t.iter_rows()}
            except Exception:  # a damaged cache file only costs re-reading the images
                self._stored = {}

    def __call__(self, rel: str) -> str:
        if not rel:
            return ""
        out = self._by_rel.get(rel)
        if out is None:
            from unime_assets.data.images import resolve_image_path

            path = resolve_image_path(self.root, rel)
            key = _stat_key(path)
            out = self._stored.get(key)
            if out is None:
                out = self._stored[key] = file_digest(path)
                self._new += 1
            self._by_rel[rel] = out
        return out

    def save(self) -> None:
        """Write the digest table (atomically) when new images were read; no-op without a cache file."""
        if self.cache_file is None or not self._new:
            return
        import polars as pl

        from unime_assets.io import atomic_path

        rows = list(self._stored.items())
        table = pl.DataFrame(
            {"path": [k[0] for k, _ in rows], "size": [k[1] for k, _ in rows],
             "mtime_ns": [k[2] for k, _ in rows], "digest": [d for _, d in rows]},
            schema={"path": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64, "digest": pl.String},
        )  # fmt: skip
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.cache_file) as tmp:
            table.write_parquet(tmp)
        self._new = 0


def item_digest(text: str, image_digest: str) -> str:
    """One (text, image) item by content: the same text and image bytes give the same key anywhere."""
    return hash_fields("item", text, image_digest)


def files_stat_fingerprint(files: Iterable[Path]) -> str:
    """Name, size and mtime of each file: changes when a file is added, removed or rewritten."""
    fields: list[object] = []
    for p in sorted(files):
        st = p.stat()
        fields += [p.name, st.st_size, st.st_mtime_ns]
    return hash_fields("files", *fields)[:16]
