"""Clustered unit embeddings that behave like a retriever's on MMEB-train: the candidate pool benchmark's data.

Random Gaussian vectors in a few thousand dimensions are all nearly orthogonal (every similarity
within ~0.02 of the mean), which real embeddings are not. Assumed structure, stated so it can be
argued with (no real VLM2Vec embeddings of MMEB-train are available here):

- a low effective rank: items live in a `rank`-dimensional latent space (128) mapped into `dim` by a
  random orthonormal basis, plus a little full-rank noise, so unrelated items spread (std ~0.06);
- anisotropy: a direction shared by every item (mean similarity of unrelated items ~0.2);
- a hierarchy: topics of ~2000 items (similarity ~0.4 within a topic), clusters of ~20 items
  (one label, one scene: ~0.75 within a cluster), near-duplicates (5 % of items, >= 0.98 to another);
- queries near their positive (similarity ~0.6; the positive is the top result for about half of them), with repeated positives as MMEB's repeated labels
  give (positives drawn Zipf-like, so some targets are the positive of many queries); members of the
  positive's cluster often outrank it, which makes the δ rule search deeper than k.
"""

from __future__ import annotations

import numpy as np
import torch


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=1).numpy()


QUERY_NOISE = (0.5, 6.0)  # range of the latent variance added to a query's positive


def clustered_embeddings(
    n_queries: int, n_pool: int, dim: int, *, rank: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries (n_queries, dim), pool (n_pool, dim), positive row per query), float32 unit rows."""
    rng = np.random.default_rng([seed, n_queries, n_pool, dim])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    r = min(rank, dim)

    def g(n: int, width: int = r) -> torch.Tensor:  # Gaussian rows of norm ~1
        return torch.randn(n, width, generator=gen) / width**0.5

    n_topics, n_clusters = max(1, n_pool // 2000), max(1, n_pool // 20)
    common, topics, clusters = g(1), g(n_topics), g(n_clusters)
    cluster_topic = torch.from_numpy(rng.integers(0, n_topics, n_clusters))
    member = torch.from_numpy(rng.integers(0, n_clusters, n_pool))
    # variances: common 0.2, topic 0.2, cluster 0.4, item 0.2 -> ~0.2 / ~0.4 / ~0.8 similarity levels
    z = (0.2**0.5 * common + 0.2**0.5 * topics[cluster_topic[member]]
         + 0.4**0.5 * clusters[member] + 0.2**0.5 * g(n_pool))  # fmt: skip
    dup = torch.from_numpy(np.nonzero(rng.random(n_pool) < 0.05)[0])  # near-duplicates of a random item
    z[dup] = z[torch.from_numpy(rng.integers(0, n_pool, len(dup)))] + 0.08 * g(len(dup))
    basis, _ = torch.linalg.qr(torch.randn(dim, r, generator=gen))
    pool = _unit(z @ basis.T + 0.05 * g(n_pool, dim))
    # Zipf-like reuse of positives: a few targets are the positive of many queries (repeated labels)
    pos = np.minimum(rng.zipf(1.3, n_queries) - 1, n_pool - 1)
    pos = rng.permutation(n_pool)[pos % n_pool] if n_pool > 1 else pos
    # per-query noise: most queries are easy, some hard (their positive ranks deep)
    noise = torch.from_numpy(QUERY_NOISE[0] + (QUERY_NOISE[1] - QUERY_NOISE[0]) * rng.random(n_queries) ** 2)
    qz = z[torch.from_numpy(pos)] + noise.float().sqrt()[:, None] * g(n_queries)
    queries = _unit(qz @ basis.T + 0.05 * g(n_queries, dim))
    return queries, pool, pos.astype(np.int64)


def similarity_profile(queries: np.ndarray, pool: np.ndarray, pos: np.ndarray, sample: int = 200) -> dict:
    """Numbers that describe the data: positive similarity, rank of the positive, spread of unrelated pairs."""
    rng = np.random.default_rng(1)
    rows = rng.choice(len(queries), min(sample, len(queries)), replace=False)
    s = queries[rows] @ pool.T
    pos_s = s[np.arange(len(rows)), pos[rows]]
    rank = (s > pos_s[:, None]).sum(1)
    top = -np.sort(-s, axis=1)
    return {"pos_sim": float(pos_s.mean()), "pos_rank_median": float(np.median(rank)),
            "pos_rank_p90": float(np.percentile(rank, 90)), "sim_mean": float(s.mean()), "sim_std": float(s.std()),
            "sim_at_rank_50": float(top[:, 49].mean()) if top.shape[1] >= 50 else float("nan")}  # fmt: skip
