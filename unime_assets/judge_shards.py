"""Resumable judge scoring: shards of queries written atomically, keyed by everything that sets a score.

A shard's file name carries a hash of (judge model fingerprint, prompt version and text, backend and
dtype, the shard's input content). A restarted run finds the shards it already wrote and skips
them; a changed judge, prompt or input gives another key, so stale scores are never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from unime_assets.io import atomic_path, write_parquet
from unime_assets.models.encoding import Item

FULL_HASH_MAX_BYTES = 256 * 2**20  # files up to this size are hashed whole
SAMPLE_BLOCK = 2**20
SAMPLE_BLOCKS = 64
SHARD_SCHEMA = {"pair_id": pl.Utf8, "pos_score": pl.Float64, "cand_scores": pl.List(pl.Float64)}

_fingerprint_memo: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file; above FULL_HASH_MAX_BYTES: its size, safetensors header, and 64 spread 1 MiB blocks.

    Sampling keeps a 15 GB 7B checkpoint cheap to fingerprint; retraining changes every weight, so any
    sampled block differs. Memoised per (path, size, mtime) within the process.
    """
    st = path.stat()
    memo_key = (
        str(path.resolve()),
        st.st_size,
        st.st_mtime_ns,
        FULL_HASH_MAX_BYTES,
        SAMPLE_BLOCK,
        SAMPLE_BLOCKS,
    )
    if memo_key in _fingerprint_memo:
        return _fingerprint_memo[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if st.st_size <= FULL_HASH_MAX_BYTES:
            for block in iter(lambda: fh.read(SAMPLE_BLOCK), b""):
                h.update(block)
        else:
            h.update(b"sampled:%d:" % st.st_size)
            if path.suffix == ".safetensors":  # the header names, shapes and offsets of every tensor
                (n,) = struct.unpack("<Q", fh.read(8))
                h.update(fh.read(min(n, 100 * 2**20)))
            step = max((st.st_size - SAMPLE_BLOCK) // (SAMPLE_BLOCKS - 1), 1)
            for i in range(SAMPLE_BLOCKS):
                fh.seek(max(min(i * step, st.st_size - SAMPLE_BLOCK), 0))
                h.update(fh.read(SAMPLE_BLOCK))
    digest = h.hexdigest()
    _fingerprint_memo[memo_key] = digest
    return digest


def model_fingerprint(path: str | os.PathLike) -> str:
    """Hash of a checkpoint directory: every top-level, non-hidden file (config, weights, tokenizer,
    chat template, image processor), so a retrained judge or a changed template gives a new value."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"judge checkpoint {root} has no files to fingerprint")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_file_digest(p)}\n".encode())
    return h.hexdigest()


def _feed(h, *fields: str) -> None:
    for f in fields:  # length-prefixed, so ("ab", "c") and ("a", "bc") differ
        b = f.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)


def content_hash(pair_ids: Sequence[str], groups: Sequence[tuple[Item, Sequence[Item]]]) -> str:
    """Hash of a shard's inputs: pair ids, query texts and image paths, every candidate's text and path."""
    h = hashlib.sha256()
    for pid, (q, cands) in zip(pair_ids, groups, strict=True):
        _feed(h, "q", str(pid), q.text, q.image, str(len(cands)))
        for c in cands:
            _feed(h, c.text, c.image)
    return h.hexdigest()


def run_key(model_fp: str, prompt_version: str, prompt: str, engine_id: str) -> str:
    """What every shard of one scoring configuration shares."""
    h = hashlib.sha256()
    _feed(h, model_fp, prompt_version, prompt, engine_id)
    return h.hexdigest()


def shard_key(run: str, content: str) -> str:
    return hashlib.sha256(f"{run}:{content}".encode()).hexdigest()


def shard_path(shard_dir: str | os.PathLike, index: int, key: str) -> Path:
    return Path(shard_dir) / f"judge-{index:06d}-{key[:24]}.parquet"


def shard_bounds(n_queries: int, shard_queries: int) -> list[tuple[int, int]]:
    if shard_queries < 1:
        raise ValueError(f"shard_queries must be >= 1, got {shard_queries}")
    return [(s, min(s + shard_queries, n_queries)) for s in range(0, n_queries, shard_queries)]


def write_shard(df: pl.DataFrame, path: Path, meta: dict) -> None:
    """Atomic: a killed run leaves either the whole shard or none; a JSON sidecar says what made it."""
    with atomic_path(path.with_suffix(".json")) as tmp:  # sidecar first: the parquet marks the shard done
        tmp.write_text(json.dumps(meta, indent=1))
    write_parquet(df, path)


def read_shard(path: Path, pair_ids: Iterable[str], n_cands: Sequence[int]) -> pl.DataFrame | None:
    """The shard if it exists and matches the expected rows, else None (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        df = pl.read_parquet(path)
    except Exception:  # unreadable: recompute rather than fail the run
        return None
    if (df.columns != list(SHARD_SCHEMA) or df["pair_id"].to_list() != list(pair_ids)
            or df["cand_scores"].list.len().to_list() != list(n_cands)):  # fmt: skip
        return None
    return df
