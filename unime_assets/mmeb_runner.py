"""Run a model over MMEB eval subsets: the V1 protocol, optionally with listwise reranking.

Per subset, unique queries and unique (text, image) candidates are encoded once; each row ranks
only its own candidates by cosine; a hit is argmax == 0 (ties go to the ground truth). With the
reranker, the embedder's top-k of each row is reordered by the listwise answer; an unparsable
answer keeps the embedder's order and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from unime_assets.evaluation import parse_listwise_answer, precision_at_1, row_predictions
from unime_assets.models.encoding import ImageLoader, Item, encode_items


@dataclass
class SubsetResult:
    subset: str
    precision_at_1: float
    n_rows: int
    row_scores: list[np.ndarray] = field(repr=False, default_factory=list)


def embed_subset(lm, rows: pl.DataFrame, images: ImageLoader, batch_size: int) -> list[np.ndarray]:
    """Cosine scores per row against that row's own candidates, each unique input encoded once."""
    uniq: dict[Item, int] = {}
    for r in rows.iter_rows(named=True):
        uniq.setdefault(Item(r["qry_text"], r["qry_img_path"]), len(uniq))
        for t, p in zip(r["tgt_text"], r["tgt_img_path"], strict=True):
            uniq.setdefault(Item(t, p), len(uniq))
    emb = encode_items(lm.model, lm.processor, list(uniq), images, lm.image_token, batch_size=batch_size,
                       desc="eval encode")  # fmt: skip
    q = np.stack([emb[uniq[Item(r["qry_text"], r["qry_img_path"])]] for r in rows.iter_rows(named=True)])
    c = [
        np.stack([emb[uniq[Item(t, p)]] for t, p in zip(r["tgt_text"], r["tgt_img_path"], strict=True)])
        for r in rows.iter_rows(named=True)
    ]
    return row_predictions(q, c)


def evaluate_model(lm, eval_df: pl.DataFrame, image_root: str, *, image_size: int | None, batch_size: int,
                   log=None) -> dict[str, SubsetResult]:  # fmt: skip
    images = ImageLoader(image_root, resize=image_size)
    out: dict[str, SubsetResult] = {}
    for subset, rows in eval_df.group_by("subset", maintain_order=True):
        name = str(subset[0])
        scores = embed_subset(lm, rows, images, batch_size)
        out[name] = SubsetResult(name, precision_at_1(scores), rows.height, scores)
        if log:
            log(f"{name}: P@1 {out[name].precision_at_1:.3f} over {rows.height} rows")
    return out


@dataclass
class RerankOutcome:
    precision_at_1: float
    unparsable: int


def rerank_subset(reranker, rows: pl.DataFrame, row_scores: list[np.ndarray], images: ImageLoader, *,
                  top_k: int, batch_size: int) -> RerankOutcome:  # fmt: skip
    from unime_assets.reranking import rerank_listwise

    queries, lists, orders = [], [], []
    for r, scores in zip(rows.iter_rows(named=True), row_scores, strict=True):
        # Stable sort: equal scores keep candidate order, so a tied ground truth stays first.
        order = np.argsort(-scores, kind="stable")[:top_k].tolist()
        orders.append(order)
        queries.append(Item(r["qry_text"], r["qry_img_path"]))
        lists.append([Item(r["tgt_text"][j], r["tgt_img_path"][j]) for j in order])
    texts = rerank_listwise(reranker.model, reranker.processor, queries, lists, images, batch_size=batch_size)
    hits, unparsable = 0, 0
    for order, text in zip(orders, texts, strict=True):
        chosen = parse_listwise_answer(text, len(order))
        if chosen is None:
            unparsable += 1
            chosen = 0  # keep the embedder's top-1
        hits += int(order[chosen] == 0)
    return RerankOutcome(hits / max(len(orders), 1), unparsable)
