"""How good a judge is: held-out (query, ground truth) vs (query, other candidate) pairs, and score-matrix statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unime_assets.models.encoding import Item


def held_out_pairs(
    eval_df, *, max_rows: int = 400, seed: int = 0
) -> tuple[list[tuple[Item, Item]], np.ndarray]:
    """(query, ground truth) positives and (query, random other candidate of its row) negatives."""
    rng = np.random.default_rng(seed)
    rows = (
        eval_df.sample(n=min(max_rows, eval_df.height), seed=seed) if eval_df.height > max_rows else eval_df
    )
    pairs, labels = [], []
    for r in rows.iter_rows(named=True):
        if len(r["tgt_text"]) < 2:
            continue
        query = Item(r["qry_text"], r["qry_img_path"])
        j = int(rng.integers(1, len(r["tgt_text"])))
        pairs += [
            (query, Item(r["tgt_text"][0], r["tgt_img_path"][0])),
            (query, Item(r["tgt_text"][j], r["tgt_img_path"][j])),
        ]
        labels += [1, 0]
    return pairs, np.asarray(labels)


def score_quality(pos_scores: np.ndarray, cand_scores: Sequence[np.ndarray]) -> dict[str, float]:
    """Monitoring numbers for a judge score matrix (NaN where undefined).

    - auc_pos_vs_candidates: all positives vs all candidates pooled (ties count half);
    - auc_within_query: per query, P(positive > its candidate) (ties half), averaged over queries;
    - false_negative_rate: fraction of all candidates scoring above their own query's positive;
    - false_negative_rate_per_query: that fraction per query, averaged over queries;
    - frac_queries_with_false_negative: queries with at least one candidate above their positive;
    - frac_pos_below_0.5: queries whose positive the judge does not accept.
    """
    from sklearn.metrics import roc_auc_score

    nan = float("nan")
    pos = np.asarray(pos_scores, dtype=np.float64)
    cands = [np.asarray(c, dtype=np.float64) for c in cand_scores]
    if len(cands) != len(pos):
        raise ValueError(f"score_quality: {len(pos)} positives but {len(cands)} candidate lists")
    flat = np.concatenate(cands) if cands else np.empty(0)
    rows = [(p, c) for p, c in zip(pos, cands, strict=True) if len(c)]
    above = [int(np.sum(c > p)) for p, c in rows]
    within = [float(np.mean((p > c) + 0.5 * (p == c))) for p, c in rows]
    labels, values = np.r_[np.ones(len(pos)), np.zeros(len(flat))], np.r_[pos, flat]
    return {
        "auc_pos_vs_candidates": float(roc_auc_score(labels, values)) if len(flat) and len(pos) else nan,
        "auc_within_query": float(np.mean(within)) if within else nan,
        "false_negative_rate": float(sum(above) / len(flat)) if len(flat) else nan,
        "false_negative_rate_per_query": float(
            np.mean([a / len(c) for a, (_, c) in zip(above, rows, strict=True)])
        )
        if rows
        else nan,
        "frac_queries_with_false_negative": float(np.mean([a > 0 for a in above])) if rows else nan,
        "frac_pos_below_0.5": float(np.mean(pos < 0.5)) if len(pos) else nan,
        "mean_pos_score": float(pos.mean()) if len(pos) else nan,
        "mean_cand_score": float(flat.mean()) if len(flat) else nan,
    }
