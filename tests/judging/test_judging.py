"""Judge: the score formula, the prompt layout, and batched scoring equal to one pair at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unime_assets.judging import (
    PAIRWISE_PROMPT,
    judge_score_from_logits,
    pairwise_messages,
    score_pairs,
    score_quality,
    yes_no_token_ids,
)
from unime_assets.models.encoding import ImageLoader, Item
from unime_assets.models.loading import load_model


def test_score_is_yes_share_of_two_exponentials():
    y, n = torch.tensor([2.0, 0.0, -1.0, 30.0]), torch.tensor([1.0, 0.0, 3.0, -30.0])
    expected = [
        math.exp(a) / (math.exp(a) + math.exp(b)) for a, b in zip(y.tolist(), n.tolist(), strict=True)
    ]
    assert torch.allclose(judge_score_from_logits(y, n), torch.tensor(expected), atol=1e-7)
    # equals the two-way softmax, and works on python floats and bf16 logits
    assert float(judge_score_from_logits(0.5, 0.5)) == pytest.approx(0.5)
    bf = judge_score_from_logits(
        torch.tensor([3.0], dtype=torch.bfloat16), torch.tensor([1.0], dtype=torch.bfloat16)
    )
    assert bf.dtype == torch.float32 and float(bf) == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)


def test_message_layout_follows_the_official_order():
    q = Item("<|image_1|>\nRepresent the given image with the following question: What color?\n", "q.png")
    c = Item("red", "")
    content = pairwise_messages(q, c)[0]["content"]
    kinds = [p["type"] if p["type"] == "image" else p["text"] for p in content]
    assert kinds == [PAIRWISE_PROMPT, "Query:", "image",
                     "Represent the given image with the following question: What color?\n", "Candidate:", "red"]  # fmt: skip
    text_only = pairwise_messages(
        Item("a caption\n"), Item("<|image_1|>\nRepresent the given image.\n", "c.png")
    )
    kinds = [p["type"] if p["type"] == "image" else p["text"] for p in text_only[0]["content"]]
    assert kinds == [
        PAIRWISE_PROMPT,
        "Query:",
        "a caption\n",
        "Candidate:",
        "image",
        "Represent the given image.\n",
    ]


def test_yes_no_ids_are_looked_up_and_must_be_single_tokens(tiny_qwen25vl):
    from unime_assets.models.processors import load_processor

    tok = load_processor(tiny_qwen25vl).tokenizer
    yes, no = yes_no_token_ids(tok)
    assert tok.decode([yes]) == "Yes" and tok.decode([no]) == "No"

    class Splitting:
        def encode(self, word, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="need exactly one"):
        yes_no_token_ids(Splitting())


def test_batched_scores_equal_single_pair_forward(tiny_qwen25vl, settings):
    lm = load_model(tiny_qwen25vl)
    images = ImageLoader(settings.train_image_root)

    from unime_assets.data.mmeb import load_train

    train = load_train(settings.train_root, settings.train_subset_names)
    rows = train.sample(n=10, seed=1)
    pairs = [(Item(q, qi), Item(p, pi)) for q, qi, p, pi in rows.select(
        "qry", "qry_image_path", "pos_text", "pos_image_path").iter_rows()]  # fmt: skip
    pairs += [(pairs[0][0], pairs[5][1]), (pairs[3][0], pairs[1][1])]
    batched = score_pairs(lm.model, lm.processor, pairs, images, batch_size=5, progress=False)
    single = np.array(
        [score_pairs(lm.model, lm.processor, [p], images, batch_size=1, progress=False)[0] for p in pairs]
    )
    assert batched.shape == (len(pairs),)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert ((batched > 0) & (batched < 1)).all()


def test_score_quality_numbers():
    q = score_quality(np.array([0.9, 0.4]), [np.array([0.1, 0.95]), np.array([0.2, 0.3])])
    # positives 0.9, 0.4 vs candidates 0.1, 0.95, 0.2, 0.3: each positive beats 3 of 4 -> AUC 6/8
    assert q["auc_pos_vs_candidates"] == pytest.approx(6 / 8)
    assert q["false_negative_rate"] == pytest.approx(0.25)  # (1/2 + 0/2) / 2
    assert q["frac_pos_below_0.5"] == pytest.approx(0.5)


def test_score_quality_on_unequal_lists_with_ties():
    pos = np.array([0.9, 0.4, 0.3])
    cands = [np.array([0.1, 0.95, 0.9]), np.array([0.2]), np.array([])]
    q = score_quality(pos, cands)
    # pooled AUC over 3 x 4 (positive, candidate) pairs: 0.9 beats 0.1, 0.2 and ties 0.9 -> 2.5; 0.4 and 0.3 -> 2 each
    assert q["auc_pos_vs_candidates"] == pytest.approx(6.5 / 12)
    # within query: q0 (1 + 0 + 0.5) / 3, q1 1 / 1; the query without candidates is left out
    assert q["auc_within_query"] == pytest.approx((0.5 + 1.0) / 2)
    # only 0.95 lies above its own positive: 1 of the 4 candidates, 1/3 and 0/1 per query
    assert q["false_negative_rate"] == pytest.approx(1 / 4)
    assert q["false_negative_rate_per_query"] == pytest.approx((1 / 3 + 0) / 2)
    assert q["frac_queries_with_false_negative"] == pytest.approx(1 / 2)
    assert q["frac_pos_below_0.5"] == pytest.approx(2 / 3)
    assert q["mean_pos_score"] == pytest.approx(1.6 / 3)
    assert q["mean_cand_score"] == pytest.approx(2.15 / 4)


def test_score_quality_extremes_and_empty_input():
    perfect = score_quality(np.array([0.8, 0.7]), [np.array([0.1, 0.2]), np.array([0.3])])
    assert perfect["auc_pos_vs_candidates"] == 1.0 and perfect["false_negative_rate"] == 0.0
    inverted = score_quality(np.array([0.1]), [np.array([0.5, 0.6])])
    assert inverted["auc_pos_vs_candidates"] == 0.0 and inverted["false_negative_rate"] == 1.0
    assert inverted["frac_queries_with_false_negative"] == 1.0 and inverted["frac_pos_below_0.5"] == 1.0
    empty = score_quality(np.array([]), [])
    assert all(math.isnan(v) for v in empty.values())
    with pytest.raises(ValueError, match="candidate lists"):
        score_quality(np.array([0.5, 0.5]), [np.array([0.1])])


def test_plain_reference_equals_batched_scoring(tiny_qwen25vl, settings):
    from unime_assets.judging import score_pairs_plain

    lm = load_model(tiny_qwen25vl)
    images = ImageLoader(settings.train_image_root)
    pairs = [
        (Item("a red circle"), Item("<|image_1|>\nRepresent the given image.", "")),
        (Item("x"), Item("y")),
    ]
    plain = score_pairs_plain(lm.model, lm.processor, pairs, images)
    np.testing.assert_allclose(
        plain, score_pairs(lm.model, lm.processor, pairs, images, progress=False), atol=1e-5
    )


def test_unknown_backend_is_rejected():
    from unime_assets.judging import engine_id, make_engine

    with pytest.raises(ValueError, match="unknown judge backend"):
        engine_id("tgi")
    with pytest.raises(ValueError, match="unknown judge backend"):
        make_engine("/nonexistent", "/nonexistent", backend="tgi")
    assert engine_id("hf") in ("hf:float32", "hf:bfloat16") and engine_id("vllm", {"dtype": "bfloat16"}) == (
        "vllm:bfloat16"
    )


def test_pool_groups_look_candidates_up_by_cand_id():
    import polars as pl

    from unime_assets.judging import pool_groups

    train = pl.DataFrame({"pair_id": ["p0", "p1"], "qry": ["q0", "q1"], "qry_image_path": ["", "q1.png"]})
    cands = pl.DataFrame({"cand_id": [0, 1, 2], "text": ["c0", "c1", "c2"], "image_path": ["", "c1.png", ""]})
    pool = pl.DataFrame({"pair_id": ["p0", "p1"], "pos_cand_id": [1, 0], "cand_ids": [[2, 0], []]})
    ids, groups = pool_groups(train, cands, pool)
    assert ids == ["p0", "p1"]
    assert groups[0] == (Item("q0"), [Item("c1", "c1.png"), Item("c2"), Item("c0")])
    assert groups[1] == (Item("q1", "q1.png"), [Item("c0")])
    assert pool_groups(train, cands.reverse(), pool) == (ids, groups)  # table order does not matter
    with pytest.raises(ValueError, match="do not match"):
        pool_groups(train.reverse(), cands, pool)
