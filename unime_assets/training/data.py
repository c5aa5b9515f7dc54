"""Training examples for each loop, built from the asset tables (rows aligned by pair_id)."""

from __future__ import annotations

import random

import polars as pl

from unime_assets.judging import item_content, pairwise_messages, strip_placeholder
from unime_assets.models.encoding import Item
from unime_assets.reranking import SFTExample, reranker_examples
from unime_assets.training.embedder import EmbedderExample

TRAINING_SET_SCHEMA = {
    "pair_id": pl.String, "subset": pl.String, "qry": pl.String, "qry_image_path": pl.String,
    "pos_text": pl.String, "pos_image_path": pl.String, "pos_score": pl.Float64,
    "neg_texts": pl.List(pl.String), "neg_image_paths": pl.List(pl.String), "neg_scores": pl.List(pl.Float64),
    "strategy": pl.String, "fallback": pl.Boolean,
}  # fmt: skip


def build_training_set(
    train: pl.DataFrame, candidates: pl.DataFrame, judge: pl.DataFrame, mined: pl.DataFrame
) -> pl.DataFrame:
    """One self-contained row per query: query, positive (+ judge score) and its mined negatives
    (texts, image paths, judge scores), so training needs no other table.

    Rows are joined on pair_id; a mined query missing from the train or judge table is an error
    naming it (its upstream partitions were materialized from different inputs).
    """
    for name, df in (("mmeb_train", train), ("judge_scores", judge)):
        missing = mined.join(df, on="pair_id", how="anti")
        if missing.height:
            raise ValueError(
                f"training set: {missing.height} pair_id(s) of mined_negatives are absent from {name} "
                f"(first: {missing['pair_id'][0]}); re-materialize the upstream partitions together"
            )
    texts, images = candidates["text"].to_list(), candidates["image_path"].to_list()
    if candidates["cand_id"].to_list() != list(range(candidates.height)):
        raise ValueError("training set: candidate ids must be the row numbers 0..n-1 of the candidates table")
    df = (
        mined.select("pair_id", "neg_cand_ids", "neg_scores", "strategy", "fallback")
        .join(
            train.select("pair_id", "subset", "qry", "qry_image_path", "pos_text", "pos_image_path"),
            on="pair_id",
            maintain_order="left",
        )
        .join(judge.select("pair_id", "pos_score"), on="pair_id", maintain_order="left")
    )
    df = df.with_columns(
        pl.Series(
            "neg_texts", [[texts[i] for i in ids] for ids in df["neg_cand_ids"].to_list()], pl.List(pl.String)
        ),
        pl.Series(
            "neg_image_paths",
            [[images[i] for i in ids] for ids in df["neg_cand_ids"].to_list()],
            pl.List(pl.String),
        ),  # fmt: skip
    )
    return df.select([pl.col(c).cast(t) for c, t in TRAINING_SET_SCHEMA.items()])


def _queries(train: pl.DataFrame) -> list[Item]:
    return [Item(t, p) for t, p in zip(train["qry"], train["qry_image_path"], strict=True)]


def _positives(train: pl.DataFrame) -> list[Item]:
    return [Item(t, p) for t, p in zip(train["pos_text"], train["pos_image_path"], strict=True)]


def _negatives(ts: pl.DataFrame) -> list[list[Item]]:
    return [
        [Item(t, p) for t, p in zip(texts, paths, strict=True)]
        for texts, paths in zip(ts["neg_texts"].to_list(), ts["neg_image_paths"].to_list(), strict=True)
    ]


def embedder_examples(training_set: pl.DataFrame, k: int) -> list[EmbedderExample]:
    """Per query: [positive, first k mined negatives] with [positive score, their judge scores]."""
    out = []
    rows = zip(_queries(training_set), _positives(training_set), training_set["pos_score"], _negatives(training_set),
               training_set["neg_scores"], training_set["pair_id"], strict=True)  # fmt: skip
    for q, pos, pos_score, negs, neg_scores, pid in rows:
        if len(negs) < k:
            raise ValueError(f"embedder needs k={k} negatives per query but pair {pid} has {len(negs)}")
        out.append(EmbedderExample(q, [pos, *negs[:k]], [float(pos_score), *map(float, neg_scores[:k])]))
    return out


def reranker_sft_examples(training_set: pl.DataFrame, seed: int = 0, *, slot_draw: str = "official",
                          pairwise_prompt: str = "official", list_sizes: tuple[int, int] | None = None,
                          listwise_per_query: int = 1) -> list[SFTExample]:  # fmt: skip
    """Per query, in query order: its pairwise Yes, pairwise No and `listwise_per_query` listwise examples
    (reranking.reranker_examples), the slot draws seeded."""
    rng = random.Random(seed)
    out: list[SFTExample] = []
    for q, pos, negs in zip(
        _queries(training_set), _positives(training_set), _negatives(training_set), strict=True
    ):
        out += reranker_examples(q, pos, negs, rng, slot_draw=slot_draw, pairwise_prompt=pairwise_prompt,
                                 list_sizes=list_sizes, n_listwise=listwise_per_query)
    return out


def pretraining_examples(corpus_file) -> list[SFTExample]:
    """Embedded default only: the generative pretraining corpus (data/synthetic/pretraining.py) as chat
    SFT examples, one user turn [image, question] -> answer; image paths relative to the corpus folder."""
    rows = pl.read_parquet(corpus_file)
    if rows.is_empty():
        raise ValueError(f"pretraining corpus {corpus_file} has no rows")
    return [SFTExample([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], a, [img],
                       f"pretrain_{kind}")
            for img, q, a, kind in rows.select("image_path", "question", "answer", "kind").iter_rows()]  # fmt: skip


def retriever_pairs(train: pl.DataFrame) -> list[tuple[Item, Item]]:
    return list(zip(_queries(train), _positives(train), strict=True))


def judge_bootstrap_examples(
    train: pl.DataFrame, seed: int = 0, hard_fraction: float = 0.75
) -> list[SFTExample]:
    """Embedded default only: turn the tiny random Qwen2.5-VL into a (weak) stand-in for an instruct judge.

    Three kinds of chat examples: Yes for (query, positive); No for (query, another positive), a
    `hard_fraction` of them from the same subset (same instruction, other answer) and the rest from
    the whole pool (the cross-dataset candidates FAISS retrieves); and, for text targets, the plain
    generative answer to the query. The generative examples supervise every answer token with what
    the image shows, which grounds the tiny model far faster than the single Yes/No token alone.
    """
    rng = random.Random(seed)
    queries, positives = _queries(train), _positives(train)
    subsets = train["subset"].to_list()
    by_subset: dict[str, list[int]] = {}
    for i, s in enumerate(subsets):
        by_subset.setdefault(s, []).append(i)
    out: list[SFTExample] = []
    for i, (q, pos) in enumerate(zip(queries, positives, strict=True)):
        out.append(
            SFTExample(pairwise_messages(q, pos), "Yes", [p for p in (q.image, pos.image) if p], "judge_yes")
        )
        pool = by_subset[subsets[i]] if rng.random() < hard_fraction else range(len(positives))
        for _ in range(20):  # a positive equal to this one is not a negative
            neg = positives[rng.choice(list(pool))]
            if neg != pos:
                out.append(
                    SFTExample(
                        pairwise_messages(q, neg), "No", [p for p in (q.image, neg.image) if p], "judge_no"
                    )
                )
                break
        if not pos.image:
            out.append(SFTExample([{"role": "user", "content": item_content(q)}], strip_placeholder(pos.text),
                                  [q.image] if q.image else [], "answer"))  # fmt: skip
    return out
