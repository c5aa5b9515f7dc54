"""The MMEB report: the long table, markdown per dataset and per aggregate, published numbers beside ours.

Framework-free (polars + the evaluation maths); the `mmeb_report` asset renders these into Dagster
metadata and MLflow artifacts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import polars as pl

from unime_assets.data.catalog import META_TASKS, SubsetInfo
from unime_assets.evaluation.metrics import AGGREGATE_KEYS, aggregate
from unime_assets.evaluation.published import Published

REPORT_SCHEMA = {"subset": pl.String, "meta_task": pl.String, "split": pl.String, "model": pl.String,
                 "precision_at_1": pl.Float64}  # fmt: skip
_AGG_HEADERS = {"classification": "Cls", "vqa": "VQA", "retrieval": "Ret", "grounding": "Grd", "ind": "IND",
                "ood": "OOD", "overall": "overall"}  # fmt: skip


def report_table(
    per_model: Mapping[str, Mapping[str, float]], info: Mapping[str, SubsetInfo]
) -> pl.DataFrame:
    """One row per (subset, model): subset, meta_task, split (IND/OOD), model, precision_at_1 (fraction)."""
    rows = [
        {
            "subset": n,
            "meta_task": info[n].meta_task,
            "split": info[n].split,
            "model": m,
            "precision_at_1": float(p),
        }
        for m, scores in per_model.items()
        for n, p in scores.items()
    ]
    return pl.DataFrame(rows, schema=REPORT_SCHEMA)


def _pct(v: float | None) -> str:
    """Our scores are fractions."""
    return "–" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def _num(v: float | None) -> str:
    """Published numbers are already x100."""
    return "–" if v is None or math.isnan(v) else f"{v:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ordered(subsets: Sequence[str], info: Mapping[str, SubsetInfo]) -> list[str]:
    # Meta-task, then IND before OOD, then evaluation order: how MMEB tables read.
    pos = {n: i for i, n in enumerate(subsets)}
    return sorted(subsets, key=lambda n: (META_TASKS.index(info[n].meta_task), info[n].split, pos[n]))


def per_dataset_rows(per_model: Mapping[str, Mapping[str, float]], info: Mapping[str, SubsetInfo],
                     published: Sequence[Published] = ()) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """(header, rows): Precision@1 (%) per evaluated dataset, our models then the published ones that have
    per-dataset values."""
    subsets = _ordered(list(next(iter(per_model.values()), {})), info)
    pubs = [p for p in published if p.per_dataset]
    header = ["dataset", "meta-task", "split", *per_model, *(f"{p.label} (published)" for p in pubs)]
    rows = [
        [n, info[n].meta_task, info[n].split, *(_pct(per_model[m].get(n)) for m in per_model),
         *(_num(p.per_dataset.get(n)) for p in pubs)]
        for n in subsets
    ]  # fmt: skip
    return header, rows


def per_dataset_markdown(per_model: Mapping[str, Mapping[str, float]], info: Mapping[str, SubsetInfo],
                         published: Sequence[Published] = ()) -> str:  # fmt: skip
    return markdown_table(*per_dataset_rows(per_model, info, published))


def aggregate_markdown(per_model: Mapping[str, Mapping[str, float]], info: Mapping[str, SubsetInfo],
                       published: Sequence[Published] = (), *, n_configured: int | None = None) -> str:  # fmt: skip
    return markdown_table(*aggregate_rows(per_model, info, published, n_configured=n_configured))


def aggregate_rows(per_model: Mapping[str, Mapping[str, float]], info: Mapping[str, SubsetInfo],
                   published: Sequence[Published] = (), *,
                   n_configured: int | None = None) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """(header, rows): means per meta-task, IND, OOD and overall (= mean over datasets) for our models; the published
    aggregates below them, and, on a partial evaluation, the published per-dataset numbers averaged
    over the same datasets so the comparison is like for like."""
    header = ["model", *(_AGG_HEADERS[k] for k in AGGREGATE_KEYS), "datasets"]
    rows = []
    evaluated: list[str] = []
    for m, scores in per_model.items():
        agg = aggregate(scores, info)
        evaluated = list(scores)
        n = f"{len(scores)}" + (f" of {n_configured}" if n_configured else "")
        rows.append([m, *(_pct(agg[k]) for k in AGGREGATE_KEYS), n])
    for p in published:
        rows.append([f"{p.label} (published)", *(_num(p.aggregates.get(k)) for k in AGGREGATE_KEYS),
                     "36" if p.aggregates else "–"])  # fmt: skip
    partial = [p for p in published if p.per_dataset and any(n not in evaluated for n in p.per_dataset)]
    for p in partial:
        same = {n: p.per_dataset[n] for n in evaluated if n in p.per_dataset}
        if same:
            agg = aggregate(same, info)
            rows.append([f"{p.label} (published, same {len(same)} datasets)", *(_num(agg[k]) for k in AGGREGATE_KEYS),
                         str(len(same))])  # fmt: skip
    return header, rows


def sources_markdown(published: Sequence[Published]) -> str:
    if not published:
        return ""
    lines = ["Published numbers:"]
    lines += [f"- {p.label}: {p.source}" + (f" ({p.note})" if p.note else "") for p in published]
    return "\n".join(lines)


def zeroshot_table(results: Mapping[str, Mapping[str, float]]) -> pl.DataFrame:
    """Long table of zero-shot metrics: set, metric (e.g. t2i_r@1, i2t_r@5, replace), value (fraction)."""
    rows = [
        {"set": s, "metric": k, "value": float(v)}
        for s, metrics in results.items()
        for k, v in metrics.items()
    ]
    return pl.DataFrame(rows, schema={"set": pl.String, "metric": pl.String, "value": pl.Float64})


def zeroshot_summary(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The paper's Table 3-6 aggregates when their sets are present (paper.md §8): RShort = mean of the
    Flickr30K and COCO R@1 both ways, RLong = the same for ShareGPT4V and Urban1K, RCompos = mean of
    SugarCrepe Replace / Swap / Add."""
    out = {}
    for key, sets in (("r_short", ("flickr30k", "coco5k")), ("r_long", ("sharegpt4v", "urban1k"))):
        if all(s in results for s in sets):
            vals = [results[s][f"{d}_r@1"] for s in sets for d in ("t2i", "i2t")]
            out[key] = sum(vals) / len(vals)
    sc = results.get("sugarcrepe", {})
    if all(g in sc for g in ("replace", "swap", "add")):
        out["r_compos"] = (sc["replace"] + sc["swap"] + sc["add"]) / 3
    return out


def zeroshot_markdown(results: Mapping[str, Mapping[str, float]]) -> str:
    header = ["set", "metric", "value (%)"]
    rows = [[s, k, f"{100 * v:.1f}"] for s, metrics in results.items() for k, v in metrics.items()]
    rows += [["summary", k, f"{100 * v:.1f}"] for k, v in zeroshot_summary(results).items()]
    return markdown_table(header, rows)


def protocol_markdown(subsets: Sequence[str], n_rows: Mapping[str, int],
                      ties: Mapping[str, Mapping[str, tuple[int, int]]],
                      unparsable: Mapping[str, int] | None, info: Mapping[str, SubsetInfo]) -> str:  # fmt: skip
    """Per subset, what the protocol decided rather than the model: rows whose top score is an
    exact tie per model ("tied (GT among them)"; those with the GT are hits only under argmax's
    ties-to-GT rule) and the reranker's unparsable listwise answers (None: no listwise reranking)."""
    header = ["subset", "rows", *(f"{m}: tied (GT)" for m in ties)]
    if unparsable is not None:
        header.append("reranker: unparsable")
    rows = []
    for n in _ordered(subsets, info):
        row = [n, str(n_rows[n]), *(f"{t[n][0]} ({t[n][1]})" for t in ties.values())]
        if unparsable is not None:
            row.append(str(unparsable.get(n, 0)))
        rows.append(row)
    return markdown_table(header, rows)
