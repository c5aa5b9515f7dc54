"""Training examples for each loop, built from the asset tables (rows aligned by pair_id)."""

from __future__ import annotations

import random

import polars as pl

from unime_assets.judging import item_content, pairwise_messages, strip_placeholder
from unime_assets.models.encoding import Item
from unime_assets.reranking import SFTExample, reranker_examples
from unime_assets.training.loops import EmbedderExample


def _check_aligned(a: pl.DataFrame, b: pl.DataFrame, what: str) -> None:
    if a["pair_id"].to_list() != b["pair_id"].to_list():
        raise ValueError(f"{what}: rows are not aligned by pair_id; re-materialize the upstream assets together")


def _queries(train: pl.DataFrame) -> list[Item]:
    return [Item(t, p) for t, p in zip(train["qry"], train["qry_image_path"], strict=True)]


def _positives(train: pl.DataFrame) -> list[Item]:
    return [Item(t, p) for t, p in zip(train["pos_text"], train["pos_image_path"], strict=True)]


def _cand_items(candidates: pl.DataFrame) -> list[Item]:
    return [Item(t, p) for t, p in zip(candidates["text"], candidates["image_path"], strict=True)]


def embedder_examples(
    train: pl.DataFrame, candidates: pl.DataFrame, judge: pl.DataFrame, mined: pl.DataFrame, k: int
) -> list[EmbedderExample]:
    """Per query: [positive, first k mined negatives] with [positive score, their judge scores]."""
    _check_aligned(train, mined, "embedder examples (mmeb_train vs mined_negatives)")
    _check_aligned(train, judge, "embedder examples (mmeb_train vs judge_scores)")
    cands = _cand_items(candidates)
    out = []
    for q, pos, pos_score, neg_ids, neg_scores in zip(
        _queries(train), _positives(train), judge["pos_score"], mined["neg_cand_ids"], mined["neg_scores"],
        strict=True,
    ):  # fmt: skip
        if len(neg_ids) < k:
            raise ValueError(f"embedder needs k={k} negatives per query but mined_negatives has {len(neg_ids)}")
        negs = [cands[i] for i in neg_ids[:k]]
        out.append(EmbedderExample(q, [pos, *negs], [float(pos_score), *map(float, neg_scores[:k])]))
    return out


def reranker_sft_examples(
    train: pl.DataFrame, candidates: pl.DataFrame, mined: pl.DataFrame, seed: int = 0
) -> list[SFTExample]:
    _check_aligned(train, mined, "reranker examples (mmeb_train vs mined_negatives)")
    cands = _cand_items(candidates)
    rng = random.Random(seed)
    out: list[SFTExample] = []
    for q, pos, neg_ids in zip(_queries(train), _positives(train), mined["neg_cand_ids"], strict=True):
        out += reranker_examples(q, pos, [cands[i] for i in neg_ids], rng)
    return out


def retriever_pairs(train: pl.DataFrame) -> list[tuple[Item, Item]]:
    return list(zip(_queries(train), _positives(train), strict=True))


def judge_bootstrap_examples(train: pl.DataFrame, seed: int = 0, hard_fraction: float = 0.75) -> list[SFTExample]:
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
        out.append(SFTExample(pairwise_messages(q, pos), "Yes", [p for p in (q.image, pos.image) if p], "judge_yes"))
        pool = by_subset[subsets[i]] if rng.random() < hard_fraction else range(len(positives))
        for _ in range(20):  # a positive equal to this one is not a negative
            neg = positives[rng.choice(list(pool))]
            if neg != pos:
                out.append(
                    SFTExample(pairwise_messages(q, neg), "No", [p for p in (q.image, neg.image) if p], "judge_no")
                )
                break
        if not pos.image:
            out.append(SFTExample([{"role": "user", "content": item_content(q)}], strip_placeholder(pos.text),
                                  [q.image] if q.image else [], "answer"))  # fmt: skip
    return out
