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
    expected = [math.exp(a) / (math.exp(a) + math.exp(b)) for a, b in zip(y.tolist(), n.tolist(), strict=True)]
    assert torch.allclose(judge_score_from_logits(y, n), torch.tensor(expected), atol=1e-7)
    # equals the two-way softmax, and works on python floats and bf16 logits
    assert float(judge_score_from_logits(0.5, 0.5)) == pytest.approx(0.5)
    bf = judge_score_from_logits(torch.tensor([3.0], dtype=torch.bfloat16), torch.tensor([1.0], dtype=torch.bfloat16))
    assert bf.dtype == torch.float32 and float(bf) == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)


def test_message_layout_follows_the_official_order():
    q = Item("<|image_1|>\nRepresent the given image with the following question: What color?\n", "q.png")
    c = Item("red", "")
    content = pairwise_messages(q, c)[0]["content"]
    kinds = [p["type"] if p["type"] == "image" else p["text"] for p in content]
    assert kinds == [PAIRWISE_PROMPT, "Query:", "image",
                     "Represent the given image with the following question: What color?\n", "Candidate:", "red"]  # fmt: skip
    text_only = pairwise_messages(Item("a caption\n"), Item("<|image_1|>\nRepresent the given image.\n", "c.png"))
    kinds = [p["type"] if p["type"] == "image" else p["text"] for p in text_only[0]["content"]]
    assert kinds == [PAIRWISE_PROMPT, "Query:", "a caption\n", "Candidate:", "image", "Represent the given image.\n"]


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
    single = np.array([score_pairs(lm.model, lm.processor, [p], images, batch_size=1, progress=False)[0] for p in pairs])
    assert batched.shape == (len(pairs),)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert ((batched > 0) & (batched < 1)).all()


def test_score_quality_numbers():
    q = score_quality(np.array([0.9, 0.4]), [np.array([0.1, 0.95]), np.array([0.2, 0.3])])
    # positives 0.9, 0.4 vs candidates 0.1, 0.95, 0.2, 0.3: each positive beats 3 of 4 -> AUC 6/8
    assert q["auc_pos_vs_candidates"] == pytest.approx(6 / 8)
    assert q["false_negative_rate"] == pytest.approx(0.25)  # (1/2 + 0/2) / 2
    assert q["frac_pos_below_0.5"] == pytest.approx(0.5)
