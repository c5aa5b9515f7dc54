"""Resumable judge scoring: shards of queries written atomically, keyed by everything that sets a score.

A shard's file name carries a hash of (judge checkpoint fingerprint, model family, prompt version and
text, backend and dtype, the shard's input content with image bytes), all by `unime_assets.fingerprints`.
A restarted run finds the shards it already wrote and skips them; a changed judge, prompt or input gives another key, so stale scores are never reused.

A finished scoring writes `cache/current-shards.json` (the shard files it is made of); every other shard in the
folder is stale (`stale_shards`): made by another judge, prompt or input. Garbage collection removes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import polars as pl

from unime_assets.fingerprints import hash_fields
from unime_assets.io import atomic_path, write_parquet
from unime_assets.models.encoding import Item

SHARD_SCHEMA = {"pair_id": pl.Utf8, "pos_score": pl.Float64, "cand_scores": pl.List(pl.Float64)}
MANIFEST = "cache/current-shards.json"  # beside the image digests: the folder itself holds only shards


def shard_folder(judge_scores_dir: str | os.PathLike, judge: str, subset: str) -> Path:
    """Where one judge's shards of one train subset live (the asset writes, garbage collection reads)."""
    return Path(judge_scores_dir) / "shards" / judge / subset


def shard_folders(judge_scores_dir: str | os.PathLike) -> list[Path]:
    """Every (judge, subset) shard folder under the judge_scores artifacts folder."""
    root = Path(judge_scores_dir) / "shards"
    return sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []


def content_hash(pair_ids: Sequence[str], groups: Sequence[tuple[Item, Sequence[Item]]],
                 image_digest: Callable[[str], str]) -> str:  # fmt: skip
    """Hash of a shard's inputs: pair ids, every query's and candidate's text and image *bytes*
    (`image_digest`, e.g. `fingerprints.ImageDigests`), so an image replaced at the same path
    invalidates the shards that show it."""
    fields: list[object] = ["judge-shard-content"]
    for pid, (q, cands) in zip(pair_ids, groups, strict=True):
        fields += ["q", pid, q.text, image_digest(q.image), len(cands)]
        for c in cands:
            fields += [c.text, image_digest(c.image)]
    return hash_fields(*fields)


def run_key(model_fp: str, prompt_version: str, prompt: str, engine_id: str, family: str) -> str:
    """What every shard of one scoring configuration shares: the judge checkpoint, its family, the
    prompt (version and text) and the backend with its dtype."""
    return hash_fields("judge-run", model_fp, family, prompt_version, prompt, engine_id)


def shard_key(run: str, content: str) -> str:
    return hash_fields("judge-shard", run, content)


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


def write_manifest(shard_dir: str | os.PathLike, shards: Sequence[Path]) -> None:
    """The shard files the latest finished scoring of this folder is made of."""
    with atomic_path(Path(shard_dir) / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"shards": sorted(p.name for p in shards)}, indent=1))


def stale_shards(shard_dir: str | os.PathLike) -> list[Path]:
    """Shards (and sidecars) of the folder that its latest finished scoring did not use; [] without a
    manifest (nothing is known to be stale). Shards newer than the manifest belong to a scoring in
    progress and stay."""
    d = Path(shard_dir)
    try:
        current = set(json.loads((d / MANIFEST).read_text())["shards"])
        written = (d / MANIFEST).stat().st_mtime
    except (OSError, ValueError, KeyError):
        return []
    keep = current | {Path(n).with_suffix(".json").name for n in current}
    return [p for p in sorted(d.glob("judge-*"))
            if p.suffix in (".parquet", ".json") and p.name not in keep and p.stat().st_mtime <= written]  # fmt: skip
