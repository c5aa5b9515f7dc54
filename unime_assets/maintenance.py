"""Garbage collection of the artifacts folders: what no run will read again.

- orphan temporary files and folders of atomic writes (`.<name>.<random>.tmp`, `.<name>.old-<pid>`,
  `.<checkpoint>.mlflow.<random>`), left by a killed process, once older than `tmp_age` (a live
  writer's are fresh);
- judge shards of a partition that its latest finished scoring did not use (judging.shards: made
  by another judge, prompt or input);
- embedding cache namespaces whose checkpoint was retrained or deleted, or unused for `idle`, and
  shards without their key table (retrieval.embedding_cache);
- reranked-subset cache entries unused for `idle`.

`find_garbage` lists, `collect` deletes; `unime-assets recover` and the assets' `maintenance.
collect_garbage` option call them. Nothing outside the given folders is touched.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from unime_assets.judging.shards import shard_folders, stale_shards
from unime_assets.retrieval.embedding_cache import orphan_shards, stale_namespaces

TMP_NAME = re.compile(r"^\..+(\.tmp|\.old-\d+|\.mlflow\.[^/]+)$")
DAY = 86400.0


@dataclass(frozen=True)
class Garbage:
    path: Path
    kind: str  # temp | judge_shard | cache_namespace | cache_shard | rerank_entry
    reason: str
    bytes: int


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _age(p: Path, now: float) -> float:
    return now - p.stat().st_mtime


def orphan_temps(root: Path, *, tmp_age: float, now: float) -> list[Garbage]:
    out = []
    for p in sorted(root.rglob(".*")) if root.is_dir() else []:
        if TMP_NAME.match(p.name) and not any(TMP_NAME.match(a.name) for a in p.parents) and _age(p, now) > tmp_age:
            out.append(Garbage(p, "temp", f"left by an interrupted write {_age(p, now) / 3600:.1f} h ago", _size(p)))
    return out


def find_garbage(artifacts_root: str | Path, extra_roots: tuple[str | Path, ...] = (), *,
                 tmp_age: float = 6 * 3600, idle: float = 30 * DAY, now: float | None = None) -> list[Garbage]:  # fmt: skip
    """Everything collectable under the artifacts root (and, for temporary files, `extra_roots`,
    e.g. the IO manager's tables folder)."""
    now = time.time() if now is None else now
    root = Path(artifacts_root)
    out: list[Garbage] = []
    for r in (root, *map(Path, extra_roots)):
        out += orphan_temps(r, tmp_age=tmp_age, now=now)
    for part in shard_folders(root / "judge_scores"):  # shards/<judge>/<subset>
        out += [Garbage(p, "judge_shard", f"not used by the latest scoring of {part.parent.name}/{part.name}",
                        p.stat().st_size) for p in stale_shards(part)]  # fmt: skip
    cache = root / "embedding_cache"
    stale = stale_namespaces(cache, max_idle=idle, now=now)
    out += [Garbage(d, "cache_namespace", why, _size(d)) for d, why in stale]
    gone = {d for d, _ in stale}
    for d in sorted(p for p in cache.iterdir() if p.is_dir() and p not in gone) if cache.is_dir() else []:
        out += [Garbage(p, "cache_shard", "no key table points at it", p.stat().st_size) for p in orphan_shards(d, now=now)]
    rerank = root / "rerank_cache"
    out += [Garbage(p, "rerank_entry", f"not used for {_age(p, now) / DAY:.1f} days", p.stat().st_size)
            for p in sorted(rerank.glob("*.json")) if _age(p, now) > idle] if rerank.is_dir() else []  # fmt: skip
    return out


def collect(items: list[Garbage]) -> int:
    """Delete the items; returns the bytes freed (an item already gone counts 0)."""
    freed = 0
    for g in items:
        if not g.path.exists():
            continue
        if g.path.is_dir():
            shutil.rmtree(g.path, ignore_errors=True)
        else:
            g.path.unlink(missing_ok=True)
        freed += g.bytes
    return freed
