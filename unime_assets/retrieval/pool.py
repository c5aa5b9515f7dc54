"""Stage 1 per partition: one training subset's queries searched against the global index (δ rule)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from unime_assets.data.candidates import candidate_key
from unime_assets.retrieval.candidate_index import INDEX_DIGEST, CandidateIndex, build_candidate_index
from unime_assets.retrieval.encoder import Retriever, as_retriever, encode_cached, items_of
from unime_assets.retrieval.faiss_index import IndexKind
from unime_assets.retrieval.search import POOL_SCHEMA, pool_frame, search_below_positive


def _positive_rows(train_part: pl.DataFrame, candidates: pl.DataFrame) -> np.ndarray:
    keys = [
        candidate_key(t, p) for t, p in zip(train_part["pos_text"], train_part["pos_image_path"], strict=True)
    ]
    lookup = dict(zip(candidates["cand_key"].to_list(), candidates["cand_id"].to_list(), strict=True))
    rows = np.fromiter((lookup.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
    if (rows < 0).any():
        missing = train_part["pair_id"].filter(pl.Series(rows < 0)).to_list()
        raise ValueError(
            f"candidate pool: {len(missing)} positives are not in the candidate index (e.g. pair_id "
            f"{missing[:5]}); the index was built from other training data: re-materialize candidate_index"
        )
    return rows


def _search_partition(
    train_part: pl.DataFrame,
    ci: CandidateIndex,
    retriever: Retriever,
    image_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None,
    top_k: int,
    batch_size: int,
    chunk: int,
    use_gpu: bool | None,
    nprobe: int | None,
    ef_search: int | None,
    progress: bool,
) -> tuple[pl.DataFrame, dict[str, Any], np.ndarray]:
    built_with = ci.meta.get("retriever_fingerprint")
    if built_with is not None and built_with != retriever.fingerprint:
        raise ValueError(
            f"candidate index {ci.path} was built with another retriever checkpoint than {retriever.path}: "
            "re-materialize candidate_index"
        )
    if train_part.is_empty():
        empty = pl.DataFrame(schema=POOL_SCHEMA)
        return (
            empty,
            {"queries": 0, "pool_size": ci.candidates.height, "n_encoded": 0, "n_cached": 0},
            np.empty(0),
        )
    pos_idx = _positive_rows(train_part, ci.candidates)
    queries = items_of(train_part["qry"], train_part["qry_image_path"])
    q_emb, cstats = encode_cached(queries, retriever, image_root, cache_dir=cache_dir, batch_size=batch_size,
                                  desc="queries", progress=progress)  # fmt: skip
    index, on_gpu = ci.searcher(use_gpu=use_gpu, nprobe=nprobe, ef_search=ef_search)
    t0 = time.perf_counter()
    pos_emb = np.asarray(ci.embeddings[pos_idx], dtype=np.float32)
    res = search_below_positive(index, q_emb, pos_emb, pos_idx, k=top_k, chunk=chunk, cand_emb=ci.embeddings)
    pool = pool_frame(train_part["pair_id"], pos_idx, res)
    stats = {
        "queries": pool.height,
        "pool_size": ci.candidates.height,
        "top_k": top_k,
        "mean_candidates": float(res.lens.mean()),
        "min_candidates": int(res.lens.min()),
        "short_queries": int((res.lens < top_k).sum()),
        "mean_pos_sim": float(res.pos_sim.mean()),
        "n_encoded": cstats.n_encoded,
        "n_cached": cstats.n_cached,
        "n_deepened": res.n_deepened,
        "n_exact_fallback": res.n_exact,
        "search_method": res.method,
        "index_kind": ci.kind,
        "gpu": on_gpu,
        "search_seconds": round(time.perf_counter() - t0, 3),
    }
    return pool, stats, q_emb


def search_candidate_pool(
    train_part: pl.DataFrame,
    index: CandidateIndex | str | os.PathLike,
    retriever_path: str | os.PathLike | Retriever,
    image_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None,
    top_k: int = 50,
    batch_size: int = 64,
    chunk: int = 4096,
    use_gpu: bool | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    progress: bool = True,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One partition's queries against the global index: (pool, stats).

    pool: `pair_id, pos_cand_id, cand_ids (list[i64]), cand_sims (list[f32]), pos_sim, index_digest`, rows in
    `train_part` order; per query the `top_k` most similar candidates strictly below its positive's
    similarity (δ rule), the positive's own row excluded, in retrieval order. The positive is found
    by its (text, image) key in the index's candidates table; a missing one is an error naming the
    pair_id. Query embeddings come from the cache under `cache_dir` where present. `index_digest` names
    the index searched (`candidate_index.index_digest`): its cand_ids mean something only under it.
    """
    ci = index if isinstance(index, CandidateIndex) else CandidateIndex.load(index)
    pool, stats, _ = _search_partition(
        train_part, ci, as_retriever(retriever_path), image_root, cache_dir=cache_dir, top_k=top_k,
        batch_size=batch_size, chunk=chunk, use_gpu=use_gpu, nprobe=nprobe, ef_search=ef_search, progress=progress,
    )  # fmt: skip
    return pool.with_columns(pl.lit(ci.meta["cand_keys_digest"], pl.String).alias(INDEX_DIGEST)), stats


# --- the unpartitioned pool (all training queries at once) ----------------------------------------


@dataclass
class CandidatePool:
    candidates: pl.DataFrame  # cand_id, cand_key, text, image_path
    pool: pl.DataFrame  # pair_id, pos_cand_id, cand_ids, cand_sims, pos_sim
    query_emb: np.ndarray
    cand_emb: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def build_candidate_pool(
    train: pl.DataFrame,
    retriever_path: str | os.PathLike | Retriever,
    image_root: str | os.PathLike,
    *,
    top_k: int = 50,
    batch_size: int = 64,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    index_kind: IndexKind = "flat",
    use_gpu: bool | None = None,
) -> CandidatePool:
    """Index every target of `train` and search all its queries: `build_candidate_index` + `search_candidate_pool`.

    With out_dir=None the index folder is temporary.
    """
    import tempfile

    retriever = as_retriever(retriever_path)
    with tempfile.TemporaryDirectory(prefix="candidate_index.") as tmp:
        ci = build_candidate_index(
            train, retriever, image_root, out_dir or tmp, cache_dir=cache_dir, index_kind=index_kind,
            batch_size=batch_size, use_gpu=use_gpu, progress=progress,
        )  # fmt: skip
        pool, stats, q_emb = _search_partition(
            train, ci, retriever, image_root, cache_dir=cache_dir, top_k=top_k, batch_size=batch_size,
            chunk=4096, use_gpu=use_gpu, nprobe=None, ef_search=None, progress=progress,
        )  # fmt: skip
        cand_emb = np.array(ci.embeddings, dtype=np.float32)  # detached from the temporary folder
    return CandidatePool(ci.candidates, pool, q_emb, cand_emb, {**ci.stats, **stats})
