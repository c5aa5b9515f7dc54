"""Stage 1: the global candidate pool and FAISS top-K retrieval with the paper's δ rule.

The pool is every unique (text, image) target across all training subsets (UniME-V2's released
negatives cross dataset boundaries, so the pool is global). For each query the candidates at least
as similar as the query's own positive are dropped (δ = sim(q, positive), read off the paper's
Fig. 2), which also removes the positive and exact duplicates of it, and the K most similar of the
rest are kept in retrieval order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import faiss
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
        {"cand_id": np.arange(len(texts), dtype=np.int64), "cand_key": list(first), "text": texts, "image_path": images}
    )
    return cands, pos_idx


def make_index(cand_emb: np.ndarray, use_gpu: bool | None = None) -> faiss.Index:
    """Exact inner-product index (cosine on normalised vectors); moved to GPUs when faiss-gpu sees one."""
    index = faiss.IndexFlatIP(cand_emb.shape[1])
    index.add(np.ascontiguousarray(cand_emb, dtype=np.float32))
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if (use_gpu is None and n_gpus > 0) or use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


@dataclass
class PoolResult:
    cand_idx: list[np.ndarray]  # per query, candidate rows in retrieval order
    cand_sims: list[np.ndarray]
    pos_sim: np.ndarray


def search_below_positive(
    index: faiss.Index,
    query_emb: np.ndarray,
    pos_emb: np.ndarray,
    pos_idx: np.ndarray,
    k: int = 50,
    *,
    chunk: int = 4096,
) -> PoolResult:
    """Top-k candidates strictly less similar than each query's positive.

    Searches k + margin and doubles the depth only for queries that ran short because many
    candidates outranked their positive, so the result equals filtering the full ranking.
    Queries are processed in chunks so peak memory does not grow with their number.
    """
    n, total = len(query_emb), index.ntotal
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    pos_sim = np.einsum("ij,ij->i", q, np.asarray(pos_emb, dtype=np.float32))
    out_idx: list[np.ndarray] = [np.empty(0, np.int64)] * n
    out_sim: list[np.ndarray] = [np.empty(0, np.float32)] * n
    for start in range(0, n, chunk):
        pending = np.arange(start, min(start + chunk, n))
        depth = min(total, k + 16)
        while len(pending):
            sims, ids = index.search(q[pending], depth)
            short = []
            for row, qi in enumerate(pending):
                valid = ids[row] >= 0
                # δ rule: keep only candidates strictly below the positive's similarity; the positive
                # itself (and any exact duplicate, same pool row) is excluded by index as well.
                keep = valid & (sims[row] < pos_sim[qi]) & (ids[row] != pos_idx[qi])
                if keep.sum() >= k or depth >= total:
                    out_idx[qi] = ids[row][keep][:k].astype(np.int64)
                    out_sim[qi] = sims[row][keep][:k].astype(np.float32)
                else:
                    short.append(qi)
            pending = np.asarray(short, dtype=np.int64)
            depth = min(total, depth * 2)
    return PoolResult(out_idx, out_sim, pos_sim.astype(np.float32))


@dataclass
class CandidatePool:
    candidates: pl.DataFrame  # cand_id, cand_key, text, image_path
    pool: pl.DataFrame  # pair_id, pos_cand_id, cand_ids, cand_sims, pos_sim
    query_emb: np.ndarray
    cand_emb: np.ndarray


def build_candidate_pool(
    train: pl.DataFrame,
    retriever_path: str,
    image_root: str,
    *,
    top_k: int = 50,
    batch_size: int = 64,
    progress: bool = True,
) -> CandidatePool:
    """Embed every query and the global pool with the retriever, then FAISS top-K under the δ rule."""
    from unime_assets.models.encoding import ImageLoader, Item, encode_items
    from unime_assets.models.loading import load_model

    if train.is_empty():
        raise ValueError("candidate pool: the training table is empty")
    candidates, pos_idx = build_candidate_table(train)
    lm = load_model(retriever_path, role="retriever")
    images = ImageLoader(image_root)
    queries = [Item(t, p) for t, p in zip(train["qry"], train["qry_image_path"], strict=True)]
    cands = [Item(t, p) for t, p in zip(candidates["text"], candidates["image_path"], strict=True)]
    enc = dict(batch_size=batch_size, progress=progress)
    q_emb = encode_items(lm.model, lm.processor, queries, images, lm.image_token, desc="queries", **enc)
    c_emb = encode_items(lm.model, lm.processor, cands, images, lm.image_token, desc="candidates", **enc)
    res = search_below_positive(make_index(c_emb), q_emb, c_emb[pos_idx], pos_idx, k=top_k)
    pool = pl.DataFrame(
        {
            "pair_id": train["pair_id"],
            "pos_cand_id": pos_idx,
            "cand_ids": [ids.tolist() for ids in res.cand_idx],
            "cand_sims": [s.tolist() for s in res.cand_sims],
            "pos_sim": res.pos_sim,
        },
        schema_overrides={"cand_ids": pl.List(pl.Int64), "cand_sims": pl.List(pl.Float32)},
    )
    return CandidatePool(candidates, pool, q_emb, c_emb)
