"""Judge ensembles: several judges' scores of the same candidate pool, combined per (query, candidate),
and how far the judges agree.

Inputs are the per-judge score tables of one partition (`pair_id`, `pos_score`, `cand_scores`, as
`score_candidate_pool` writes them) for the same queries in the same order. Per query an entry is the
positive or one candidate; each rule maps the judges' scores of an entry to one score in [0, 1], so
the mining rules (β is on the score scale) and the training target softmax(s/τ) read an ensemble like
a single judge:

- `mean_prob`: the mean of the judges' probabilities;
- `mean_logit`: sigmoid of the mean logit; scores are clipped to [1e-7, 1 - 1e-7] first (the judge's
  sigmoid is computed in float32, so 0 and 1 carry no more information than that);
- `rank_mean`: per query each judge ranks its positive and candidates (ties share their average rank),
  ranks are rescaled to [0, 1] by (rank - 1) / (n - 1) and averaged over judges. Calibration-free: a
  judge that is confident everywhere counts as much as a cautious one. The values are ranks, not
  probabilities: β of the UniME-V2 filter then means "within β·(n - 1) ranks of the positive";
- `auc_weighted`: the judges' probabilities averaged with reliability weights w_j ∝ max(AUC_j - 0.5, 0),
  AUC_j the judge's held-out AUC: a coin-flip judge gets no weight.

Agreement (`agreement`): per judge the AUC of positives vs candidates and its false-negative filter
rate, pairwise Spearman and Kendall τ-b correlation over every scored (query, entry) pair, and the
fraction of candidates on which the judges' false-negative filter decisions differ. The filter flags
come from the configured mining rule, applied by the caller (mining is a separate package).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import polars as pl

from unime_assets.judging.quality import score_quality
from unime_assets.judging.shards import SHARD_SCHEMA

RULES = ("mean_prob", "mean_logit", "rank_mean", "auc_weighted")
EPS = 1e-7

Rows = Sequence[np.ndarray]  # per query: [positive score, *candidate scores]


def align_tables(tables: Mapping[str, pl.DataFrame]) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    """(pair ids, per judge the rows [pos, *cands]); the judges must have scored the same queries and
    candidates in the same order (the error names the judge and the first differing query)."""
    if not tables:
        raise ValueError("ensemble: no judge score tables")
    names = list(tables)
    ref_name, ref = names[0], tables[names[0]]
    ref_ids, ref_lens = ref["pair_id"].to_list(), ref["cand_scores"].list.len().to_list()
    rows: dict[str, list[np.ndarray]] = {}
    for name in names:
        df = tables[name]
        ids, lens = df["pair_id"].to_list(), df["cand_scores"].list.len().to_list()
        for what, a, b in (("pair_id", ids, ref_ids), ("number of candidates", lens, ref_lens)):
            if a != b:
                i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                where = ref_ids[i] if i < len(ref_ids) else f"row {i}"
                raise ValueError(f"ensemble: judge {name!r} differs from {ref_name!r} in {what} at query {where} "
                                 f"({len(a)} vs {len(b)} rows); re-materialize both on the same candidate_pool")  # fmt: skip
        rows[name] = [np.r_[p, np.asarray(c, dtype=np.float64)] for p, c in
                      zip(df["pos_score"].to_list(), df["cand_scores"].to_list(), strict=True)]  # fmt: skip
    return ref_ids, rows


def to_table(pair_ids: Sequence[str], rows: Rows) -> pl.DataFrame:
    """Rows back into the judge score table layout (what mining reads)."""
    return pl.DataFrame({"pair_id": list(pair_ids), "pos_score": [float(r[0]) for r in rows],
                         "cand_scores": [r[1:].tolist() for r in rows]}, schema=SHARD_SCHEMA)  # fmt: skip


def reliability_weights(aucs: Mapping[str, float]) -> dict[str, float]:
    """w_j = max(AUC_j - 0.5, 0) / sum: weight by how far a judge is from chance on held-out pairs."""
    bad = [n for n, a in aucs.items() if a is None or not math.isfinite(a)]
    if bad:
        raise ValueError(f"ensemble rule auc_weighted: no held-out AUC for judge(s) {bad}; materialize their judge_model")
    raw = {n: max(float(a) - 0.5, 0.0) for n, a in aucs.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"ensemble rule auc_weighted: every judge is at or below chance on held-out pairs ({dict(aucs)})")
    return {n: w / total for n, w in raw.items()}


def _stacked(rows_by_judge: Mapping[str, Rows]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Queries grouped by entry count: length -> (query indices, array judges x queries x entries)."""
    names = list(rows_by_judge)
    n_queries = len(rows_by_judge[names[0]])
    groups: dict[int, list[int]] = {}
    for q in range(n_queries):
        groups.setdefault(len(rows_by_judge[names[0]][q]), []).append(q)
    return {length: (np.asarray(idx), np.stack([np.stack([rows_by_judge[n][q] for q in idx]) for n in names]))
            for length, idx in groups.items()}  # fmt: skip


def _unit_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis rescaled to [0, 1]; a single entry gets 0.5."""
    from scipy.stats import rankdata

    n = x.shape[-1]
    if n == 1:
        return np.full_like(x, 0.5)
    return (rankdata(x, method="average", axis=-1) - 1.0) / (n - 1)


def combine(rows_by_judge: Mapping[str, Rows], rule: str, aucs: Mapping[str, float] | None = None) -> list[np.ndarray]:
    """One combined row per query by `rule` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; expected one of {RULES}")
    names = list(rows_by_judge)
    if not names:
        raise ValueError("ensemble: no judges")
    if rule == "auc_weighted":
        w = reliability_weights({n: (aucs or {}).get(n, float("nan")) for n in names})
        weights = np.asarray([w[n] for n in names])
    out: list[np.ndarray] = [np.empty(0)] * len(rows_by_judge[names[0]])
    for idx, s in _stacked(rows_by_judge).values():  # s: judges x queries x entries
        if rule == "mean_prob":
            comb = s.mean(axis=0)
        elif rule == "mean_logit":
            p = np.clip(s, EPS, 1 - EPS)
            comb = 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)).mean(axis=0)))
        elif rule == "rank_mean":
            comb = _unit_ranks(s).mean(axis=0)
        else:
            comb = np.tensordot(weights, s, axes=1)
        for k, q in enumerate(idx):
            out[q] = comb[k]
    return out


def _flat(rows: Rows) -> np.ndarray:
    return np.concatenate(list(rows)) if len(rows) else np.empty(0)


def pairwise_correlations(rows_by_judge: Mapping[str, Rows]) -> list[dict]:
    """Spearman and Kendall τ-b between every two judges over all scored (query, entry) pairs."""
    from scipy.stats import kendalltau, spearmanr

    flat = {n: _flat(r) for n, r in rows_by_judge.items()}
    out = []
    for a, b in combinations(flat, 2):
        x, y = flat[a], flat[b]
        constant = len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0  # correlation undefined
        out.append({"judge_a": a, "judge_b": b, "pairs": len(x),
                    "spearman": float("nan") if constant else float(spearmanr(x, y).statistic),
                    "kendall": float("nan") if constant else float(kendalltau(x, y).statistic)})  # fmt: skip
    return out


def filter_disagreement(flags_by_judge: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float]:
    """Fraction of candidates whose false-negative flag is not the same for every judge (`any`), and
    per pair of judges (`a|b`). Flags: True where the judge's filter drops the candidate."""
    flat = {n: np.concatenate([np.asarray(f, dtype=bool) for f in fl]) if len(fl) else np.empty(0, bool)
            for n, fl in flags_by_judge.items()}  # fmt: skip
    stack = np.stack(list(flat.values())) if flat else np.empty((0, 0), bool)
    n = stack.shape[1] if stack.ndim == 2 else 0
    out = {"any": float((stack.any(axis=0) != stack.all(axis=0)).mean()) if n else float("nan")}
    for a, b in combinations(flat, 2):
        out[f"{a}|{b}"] = float((flat[a] != flat[b]).mean()) if n else float("nan")
    return out


def agreement(rows_by_judge: Mapping[str, Rows], flags_by_judge: Mapping[str, Sequence[np.ndarray]]) -> dict:
    """Per-judge quality and FN filter rate, pairwise correlations and FN filter disagreement."""
    per_judge = {}
    for name, rows in rows_by_judge.items():
        q = score_quality(np.asarray([r[0] for r in rows]), [r[1:] for r in rows])
        flags = flags_by_judge.get(name, [])
        n_flags = sum(len(f) for f in flags)
        per_judge[name] = {"auc_pos_vs_candidates": q["auc_pos_vs_candidates"],
                           "false_negative_rate": q["false_negative_rate"],
                           "fn_filter_rate": float(sum(int(np.sum(f)) for f in flags) / n_flags) if n_flags else float("nan"),
                           "mean_pos_score": q["mean_pos_score"], "mean_cand_score": q["mean_cand_score"]}  # fmt: skip
    return {"per_judge": per_judge, "pairwise": pairwise_correlations(rows_by_judge),
            "fn_filter_disagreement": filter_disagreement(flags_by_judge)}  # fmt: skip
