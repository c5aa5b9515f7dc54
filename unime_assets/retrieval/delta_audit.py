"""How the δ rule treats the false negatives a ground truth knows about (synthetic data).

The δ rule drops every global candidate at least as similar to the query as its own positive. With a
ground truth (`data.synthetic.TruthIndex`) that says which candidates are true false negatives of a
query, this counts what the rule removed (per query), its precision (the share of removed candidates
that are false negatives) and its recall (the share of the pool's false negatives it removed).
Similarities are recomputed exactly (float64) from the index's embeddings, so a candidate tied with
the positive to the last bit of FAISS's float32 may be counted on the other side.
"""

from __future__ import annotations

import numpy as np


def delta_rule_audit(query_emb: np.ndarray, cand_emb: np.ndarray, pos_idx: np.ndarray,
                     false_neg: np.ndarray) -> dict[str, float | None]:  # fmt: skip
    """`false_neg` (n_queries, n_candidates) booleans; `pos_idx` each query's own positive row."""
    q = np.asarray(query_emb, dtype=np.float64)
    c = np.asarray(cand_emb, dtype=np.float64)
    pos_idx = np.asarray(pos_idx, dtype=np.int64)
    if false_neg.shape != (q.shape[0], c.shape[0]):
        raise ValueError(f"delta audit: truth matrix {false_neg.shape} for {q.shape[0]} queries x {c.shape[0]} candidates")
    sims = q @ c.T
    rows = np.arange(len(q))
    removed = sims >= sims[rows, pos_idx][:, None]
    removed[rows, pos_idx] = False  # the positive itself is not a negative
    n_fn, n_removed = int(false_neg.sum()), int(removed.sum())
    hit = int((removed & false_neg).sum())
    n = max(len(q), 1)
    return {"false_negatives_per_query": round(n_fn / n, 3), "delta_removed_per_query": round(n_removed / n, 3),
            "delta_precision": round(hit / n_removed, 4) if n_removed else None,
            "delta_recall": round(hit / n_fn, 4) if n_fn else None}  # fmt: skip
