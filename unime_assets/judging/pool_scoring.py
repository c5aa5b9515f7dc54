"""Stage 2 per partition: judge every (query, positive) and (query, candidate) of a candidate pool, in resumable shards."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import polars as pl
from tqdm.auto import tqdm

from unime_assets.fingerprints import ImageDigests, checkpoint_fingerprint
from unime_assets.judging import shards as js
from unime_assets.judging.engines import JudgeEngine, engine_id, make_engine
from unime_assets.judging.prompt import PAIRWISE_PROMPT, PROMPT_VERSION
from unime_assets.models.encoding import Item
from unime_assets.models.processors import model_type
from unime_assets.quiet import bar_disabled


def pool_groups(train, candidates, pool) -> tuple[list[str], list[tuple[Item, list[Item]]]]:
    """Per query: its pair_id and (query, [positive, *candidates in the pool's order])."""
    if train["pair_id"].to_list() != pool["pair_id"].to_list():
        raise ValueError(
            "judge: candidate_pool rows do not match mmeb_train rows (re-materialize candidate_pool)"
        )
    items = [Item(t, p) for t, p in zip(candidates["text"], candidates["image_path"], strict=True)]
    ids = candidates["cand_id"].to_list() if "cand_id" in candidates.columns else list(range(len(items)))
    # pools refer to candidates by cand_id; the table is usually in cand_id order, but do not rely on it
    cand_items = items if ids == list(range(len(items))) else dict(zip(ids, items, strict=True))
    groups = [
        (Item(q_text, q_img), [cand_items[pos_id], *(cand_items[c] for c in cand_ids)])
        for q_text, q_img, pos_id, cand_ids in zip(
            train["qry"], train["qry_image_path"], pool["pos_cand_id"], pool["cand_ids"], strict=True
        )
    ]
    return [str(p) for p in pool["pair_id"].to_list()], groups


def score_candidate_pool(
    train,
    candidates,
    pool,
    judge_path: str,
    image_root: str,
    *,
    batch_size: int = 32,
    shard_dir: str | os.PathLike | None = None,
    shard_queries: int = 1000,
    backend: Literal["hf", "vllm"] = "hf",
    share_prefix: bool = True,
    image_cache_mb: int = 2048,
    vllm_options: Mapping[str, Any] | None = None,
    dtype: str = "auto",
    trust_remote_code: bool | None = None,
    prompt: str = PAIRWISE_PROMPT,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    on_shard: Callable[[int, int, bool], None] | None = None,
):
    """Judge every (query, positive) and (query, candidate) of the pool: one row per query with
    `pos_score` and `cand_scores` aligned with the pool's `cand_ids`.

    With `shard_dir`, every `shard_queries` queries are written there as one parquet shard, keyed by
    the judge's fingerprint and family, PROMPT_VERSION and prompt, backend and dtype, and the shard's inputs; a
    restarted run loads the shards it finds and scores only the rest (the judge is loaded only if
    a shard is missing). `on_batch(pairs_done, pairs_total)` reports progress (loaded shards count as
    done); `on_shard(index, n_shards, computed)` runs after each shard is available.
    """
    pair_ids, groups = pool_groups(train, candidates, pool)
    # image digests go to a subfolder: the shard folder itself holds only shards and their sidecars
    digests = ImageDigests(image_root, Path(shard_dir) / "cache" / "image-digests.parquet" if shard_dir else None)
    bounds = js.shard_bounds(len(groups), shard_queries if shard_dir is not None else max(len(groups), 1))
    engine: JudgeEngine | None = None

    def get_engine() -> JudgeEngine:
        nonlocal engine
        if engine is None:
            engine = make_engine(judge_path, image_root, backend=backend, batch_size=batch_size,
                                 share_prefix=share_prefix, image_cache_mb=image_cache_mb, prompt=prompt,
                                 vllm_options=vllm_options, dtype=dtype,
                                 trust_remote_code=trust_remote_code)  # fmt: skip
        return engine

    engine_name = engine_id(backend, vllm_options, dtype)
    family = model_type(judge_path)
    run = (
        js.run_key(checkpoint_fingerprint(judge_path), PROMPT_VERSION, prompt, engine_name, family)
        if shard_dir
        else ""
    )
    total = sum(len(c) for _, c in groups)
    done = 0
    parts: list[pl.DataFrame] = []
    used: list[Path] = []
    for index, (lo, hi) in enumerate(tqdm(bounds, desc="judge shards", disable=bar_disabled(progress), leave=False)):
        ids, grp = pair_ids[lo:hi], groups[lo:hi]
        n_cands = [len(c) - 1 for _, c in grp]
        path = (
            js.shard_path(shard_dir, index, js.shard_key(run, js.content_hash(ids, grp, digests)))
            if shard_dir
            else None
        )
        df = js.read_shard(path, ids, n_cands) if path is not None else None
        if path is not None:
            used.append(path)
        computed = df is None
        if df is None:

            def step(n: int) -> None:
                nonlocal done
                done += n
                if on_batch is not None:
                    on_batch(done, total)

            scores = get_engine().score_groups(grp, on_pairs=step)
            df = pl.DataFrame(
                {"pair_id": ids, "pos_score": [float(s[0]) for s in scores],
                 "cand_scores": [s[1:].tolist() for s in scores]},
                schema=js.SHARD_SCHEMA,
            )  # fmt: skip
            if path is not None:
                js.write_shard(df, path, {"run_key": run, "prompt_version": PROMPT_VERSION, "judge": str(judge_path),
                                          "family": family, "engine": engine_name, "queries": [lo, hi]})  # fmt: skip
        else:
            done += sum(len(c) for _, c in grp)
            if on_batch is not None:
                on_batch(done, total)
        parts.append(df)
        if on_shard is not None:
            on_shard(index, len(bounds), computed)
    digests.save()
    if shard_dir is not None:
        js.write_manifest(shard_dir, used)
    if not parts:
        return pl.DataFrame(schema=js.SHARD_SCHEMA)
    return pl.concat(parts, how="vertical")

