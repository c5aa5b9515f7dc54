"""Garbage collection of the artifacts: orphan temporary files, stale judge shards, cache namespaces
of retrained checkpoints and orphan cache shards go; everything a run may still read stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from unime_assets import maintenance
from unime_assets.fingerprints import checkpoint_fingerprint
from unime_assets.judging import shards as js
from unime_assets.retrieval.embedding_cache import EmbeddingCache

HOUR = 3600.0


def _touch(p: Path, age: float = 0.0, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix or not p.name.startswith("."):
        p.write_bytes(data)
    else:
        p.mkdir()
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def test_finds_exactly_what_no_run_reads_again(tmp_path):
    art = tmp_path / "assets"
    # temporary leftovers of atomic writes: old ones go, a fresh one (a live writer) stays
    old_tmp = _touch(art / "judge_scores" / ".x.parquet.k2j3.tmp", 7 * HOUR)
    fresh_tmp = _touch(art / "judge_scores" / ".y.parquet.a8b9.tmp")
    old_dir = art / ".embedder_checkpoint.old-4242"
    old_dir.mkdir(parents=True)
    _touch(old_dir / "model.safetensors", 7 * HOUR)
    os.utime(old_dir, (time.time() - 7 * HOUR,) * 2)
    # judge shards of one partition: the manifest names the current one; an older stale one goes, a
    # newer one (a scoring in progress) stays
    part = js.shard_folder(art / "judge_scores", "qwen25vl", "SynColor")  # where the asset writes them
    stale = _touch(part / "judge-000000-aaaa.parquet", 2 * HOUR)
    _touch(part / "judge-000000-aaaa.json", 2 * HOUR)
    current = _touch(part / "judge-000000-bbbb.parquet", HOUR)
    js.write_manifest(part, [current])
    in_progress = _touch(part / "judge-000001-cccc.parquet")
    os.utime(in_progress, (time.time() + 5,) * 2)
    # embedding cache: the namespace of a retrained checkpoint goes, the current one stays
    ckpt = tmp_path / "retriever"
    _touch(ckpt / "config.json", data=b"{}")
    _touch(ckpt / "model.safetensors", data=b"v1")
    cache = art / "embedding_cache"
    live = EmbeddingCache(cache, "live", source={"model": str(ckpt), "fingerprint": checkpoint_fingerprint(ckpt)})
    live.get_or_compute(["k1"], lambda pos: np.ones((len(pos), 4), dtype=np.float32))
    orphan = _touch(live.dir / "shard-0123456789abcdef.npy", 2 * HOUR)  # a merge killed mid-way
    old = EmbeddingCache(cache, "old", source={"model": str(ckpt), "fingerprint": "the weights before retraining"})
    old.get_or_compute(["k1"], lambda pos: np.ones((len(pos), 4), dtype=np.float32))
    os.utime(old.dir / ".last_used", (time.time() - 2 * HOUR,) * 2)
    rerank_old = _touch(art / "rerank_cache" / "a.json", 40 * 86400)
    rerank_new = _touch(art / "rerank_cache" / "b.json")

    found = maintenance.find_garbage(art)
    got = {(g.kind, g.path) for g in found}
    assert got == {("temp", old_tmp), ("temp", old_dir), ("judge_shard", stale), ("judge_shard", stale.with_suffix(".json")),
                   ("cache_namespace", old.dir), ("cache_shard", orphan), ("rerank_entry", rerank_old)}  # fmt: skip
    assert "retrained" in next(g.reason for g in found if g.kind == "cache_namespace")
    maintenance.collect(found)
    assert not any(p.exists() for _, p in got)
    for keep in (fresh_tmp, current, in_progress, live.dir / ".last_used", rerank_new):
        assert keep.exists(), keep
    assert live.lookup(["k1"])[1].all()  # the live cache still answers


def test_judge_shard_manifest_is_written_by_a_finished_scoring(tmp_path):
    part = tmp_path / "shards"
    a, b = _touch(part / "judge-000000-a.parquet", HOUR), _touch(part / "judge-000001-b.parquet", HOUR)
    assert js.stale_shards(part) == []  # without a manifest nothing is known to be stale
    js.write_manifest(part, [b])
    assert js.stale_shards(part) == [a]
    assert json.loads((part / js.MANIFEST).read_text()) == {"shards": [b.name]}


def test_recover_cli_lists_without_deleting(tmp_path, embedded_home):
    home = tmp_path / "dg"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    import yaml

    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw["artifacts_root"] = str(tmp_path / "assets")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    leftover = _touch(tmp_path / "assets" / "candidate_index" / ".emb.npy.zz.tmp", 7 * HOUR)
    env = {**os.environ, "DAGSTER_HOME": str(home), "UNIME_SETTINGS": str(tmp_path / "s.yaml"),
           "UNIME_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}  # fmt: skip
    cmd = [sys.executable, "-m", "unime_assets.cli", "recover"]
    dry = subprocess.run([*cmd, "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"would delete temp {leftover}" in dry.stdout and leftover.exists()
    real = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert real.returncode == 0 and f"deleted temp {leftover}" in real.stdout and not leftover.exists()
