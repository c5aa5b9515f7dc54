"""Materialization metadata that reads well in the Dagster UI: floats rounded to 4 significant digits,
tables as `MetadataValue.table` with a described schema (rendered natively on the asset page), plots
as short markdown images served by the MLflow UI (Dagster renders markdown under 1000 characters
inline) beside a link to the artifact in MLflow, and a description for every column of every table
asset (the IO manager attaches them to `dagster/column_schema`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import dagster as dg
import numpy as np

from unime_assets.tracking import RunHandle

SIGNIFICANT = 4

# Every column of every table asset, described once; the IO manager looks them up by column name, with
# the asset's own entry first where one name means different things in different tables.
COLUMNS: dict[str, str] = {
    "pair_id": "stable hash of the training row (query + positive); joins the per-query tables of a subset",
    "subset": "MMEB subset (the partition key)",
    "row": "row number inside the subset's source parquet file",
    "qry": "query text (MMEB-train `qry`, kept byte for byte)",
    "qry_image_path": "query image, relative to the train image root ('' = none)",
    "pos_text": "positive target text",
    "pos_image_path": "positive target image, relative to the train image root ('' = none)",
    "qry_text": "query text (MMEB-eval `qry_text`)",
    "qry_img_path": "query image, relative to the eval image root ('' = none)",
    "tgt_text": "candidate texts; index 0 is the ground truth",
    "tgt_img_path": "candidate images, aligned with tgt_text",
    "cand_id": "id of a unique (text, image) target of all train subsets: row number in candidate_index",
    "cand_key": "hash of the target's text and image path that deduplicates the pool",
    "text": "target text",
    "image_path": "target image, relative to the train image root ('' = none)",
    "pos_cand_id": "cand_id of the query's own positive (never among its candidates)",
    "cand_ids": "top-K retrieved candidates, most similar first, strictly below the positive's similarity (δ rule)",
    "cand_sims": "retriever cosine of each candidate, aligned with cand_ids",
    "pos_sim": "retriever cosine of the query and its positive (δ)",
    "index_digest": "digest of the candidate_index whose numbering the cand_ids use; a rebuilt index gives another",
    "pos_score": "judge score of (query, positive): e^yes / (e^yes + e^no) at the first generated token",
    "cand_scores": "judge score of each (query, candidate), aligned with candidate_pool.cand_ids",
    "neg_cand_ids": "the k mined negatives (cand_ids), in sampling order",
    "neg_scores": "judge scores of the mined negatives (1.0 for random fallback negatives)",
    "strategy": "mining rule that chose the negatives",
    "judge": "whose scores the negatives were mined from: a judge's name or 'ensemble' (mining.judge)",
    "fallback": "true when no candidate survived the filter and random negatives were drawn",
    "n_survivors": "candidates left after the strategy's false-negative filter (null for imported score files)",
    "n_filtered": "candidates the filter dropped as likely false negatives (null for imported score files)",
    "neg_texts": "texts of the mined negatives",
    "neg_image_paths": "images of the mined negatives, relative to the train image root",
    "meta_task": "MMEB meta-task: classification, vqa, retrieval or grounding",
    "split": "IND (a train subset of the same task exists) or OOD",
    "model": "evaluated model: retriever, untrained base, embedder, embedder + reranker",
    "precision_at_1": "Precision@1 on the subset (fraction; ties with the ground truth count as hits)",
    "variant": "ablation variant: the one factor changed from the base recipe (ablation/variants.py)",
    "seed": "training seed of the ablation run",
    "seeds": "number of seeds the variant ran with",
    "mean": "overall P@1 (%), mean over the variant's seeds",
    "std": "sample standard deviation of overall P@1 over seeds (null with one seed)",
    "delta_vs_baseline": "mean difference of overall P@1 to the baseline variant, paired by seed (points)",
}
ASSET_COLUMNS: dict[str, dict[str, str]] = {
    "training_set": {"pos_score": "judge score of (query, positive) from judge_scores or the score file"},
    "mined_negatives": {"pos_score": "score of (query, positive) from the same judge (or ensemble) as neg_scores"},
    "judge_ensemble": {"pos_score": "the judges' scores of (query, positive) combined by ensemble.rule",
                       "cand_scores": "the judges' scores of each (query, candidate) combined by ensemble.rule"},
}


def column_description(asset: str, column: str) -> str:
    return ASSET_COLUMNS.get(asset, {}).get(column) or COLUMNS.get(column, "")


def column_schema(asset: str, schema: Mapping[str, object]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype), description=column_description(asset, name))
                                   for name, dtype in schema.items()])  # fmt: skip


def rounded(value: float, digits: int = SIGNIFICANT) -> float:
    """`value` to `digits` significant digits (integers of that size or more keep their integer part)."""
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def readable(meta: Mapping[str, object]) -> dict[str, object]:
    """Metadata with every plain float (numpy included) rounded; other values unchanged."""
    out: dict[str, object] = {}
    for key, value in meta.items():
        if isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, float | np.floating) and not isinstance(value, bool):
            value = dg.MetadataValue.float(rounded(float(value)))
        elif isinstance(value, dg.FloatMetadataValue) and value.value is not None:  # e.g. reported through Pipes
            value = dg.MetadataValue.float(rounded(value.value))
        out[key] = value
    return out


def _cell(value: object, digits: int) -> object:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), digits)
    return value.item() if isinstance(value, np.generic) else value


def table(rows: Sequence[Sequence[object]], columns: Sequence[tuple[str, str, str]], digits: int = 3) -> dg.MetadataValue:
    """A table the UI renders inline: `columns` are (name, type, description); floats rounded to `digits`
    decimals (format percentages as numbers in % before)."""
    schema = dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d in columns])
    records = [dg.TableRecord({c[0]: _cell(v, digits) for c, v in zip(columns, row, strict=True)}) for row in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


def _number(cell: str) -> float | str | None:
    try:
        return float(cell)
    except ValueError:
        return None if cell in {"–", "-", ""} else cell


def rows_table(header: Sequence[str], rows: Sequence[Sequence[str]], describe: Mapping[str, str]) -> dg.MetadataValue:
    """A table from pre-formatted text rows (numbers already rounded, "–" for none): numeric cells become
    numbers; a column's description is `describe[name]`, else `describe["*"]`."""
    numeric = [all(isinstance(_number(r[i]), float | None) for r in rows) and i > 0 for i in range(len(header))]
    schema = dg.TableSchema(columns=[dg.TableColumn(h, "float" if numeric[i] else "string",
                                                    description=describe.get(h, describe.get("*", "")))
                                     for i, h in enumerate(header)])  # fmt: skip
    records = [dg.TableRecord({h: _number(c) if numeric[i] else c for i, (h, c) in enumerate(zip(header, r, strict=True))})
               for r in rows]  # fmt: skip
    return dg.MetadataValue.table(records=records, schema=schema)


def figure(run: RunHandle, fig, name: str, key: str) -> dict[str, dg.MetadataValue]:
    """Log the figure to the MLflow run; `key` shows it inline (served by the MLflow UI), `key`_mlflow
    links to it in the run's artifacts."""
    md = run.log_figure(fig, name)
    return {key: dg.MetadataValue.md(md), f"{key}_mlflow": dg.MetadataValue.url(run.artifact_url(f"plots/{name}.png"))}
