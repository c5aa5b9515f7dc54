"""Stage 6 of UniME-V2: MMEB evaluation, reports, published numbers and model promotion.

MMEB protocol (V1): per row, the query ranks only its own candidates by cosine; a hit is the ground
truth (index 0) at rank 1 (Precision@1); means per meta-task, IND (20 training datasets), OOD (16)
and overall (mean over the 36 datasets). Optionally the embedder's top-10 is reranked.

Modules: `metrics` (P@1, aggregation, listwise parsing, recall), `runner` (a model over eval
subsets, cached, with reranking), `report` (tables), `published` (the paper's and VLM2Vec's
numbers, each citing its table), `promotion` (the `champion` decision and its registry records).

Public functions: `precision_at_1`, `aggregate`, `aggregate_mmeb`, `parse_listwise_answer`,
`retrieval_recall`, `evaluate_model`, `rerank_subset`, `report_table`, `published_for`,
`decide_promotion`.
"""

from unime_assets.evaluation.metrics import (
    AGGREGATE_KEYS,
    aggregate,
    aggregate_mmeb,
    composition_accuracy,
    pairwise_order,
    parse_listwise_answer,
    precision_at_1,
    rerank_order,
    retrieval_recall,
    row_predictions,
    top_k_order,
    top_ties,
)
from unime_assets.evaluation.promotion import EvalRecord, PromotionDecision, decide_promotion
from unime_assets.evaluation.published import PUBLISHED, Published, published_for
from unime_assets.evaluation.report import report_table
from unime_assets.evaluation.runner import ModelHandle, evaluate_model, rerank_subset, subset_fingerprint

__all__ = [
    "AGGREGATE_KEYS",
    "PUBLISHED",
    "EvalRecord",
    "ModelHandle",
    "PromotionDecision",
    "Published",
    "aggregate",
    "aggregate_mmeb",
    "composition_accuracy",
    "decide_promotion",
    "evaluate_model",
    "pairwise_order",
    "parse_listwise_answer",
    "precision_at_1",
    "published_for",
    "report_table",
    "rerank_order",
    "rerank_subset",
    "retrieval_recall",
    "row_predictions",
    "subset_fingerprint",
    "top_k_order",
    "top_ties",
]
