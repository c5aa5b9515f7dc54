"""Reranker data: label mask on assistant tokens only, texts included, uniform positive slot."""

from __future__ import annotations

import random
from collections import Counter

from unime_assets.models.encoding import ImageLoader, Item
from unime_assets.models.processors import load_processor
from unime_assets.reranking import N_LISTWISE, listwise_answer, reranker_examples, sft_batch


def _texts(messages):
    return [p["text"] for p in messages[0]["content"] if p["type"] == "text"]


def test_three_sequences_with_texts_and_answers():
    q, pos = Item("What color is the circle?\n"), Item("red")
    negs = [Item(c) for c in ["blue", "green", "white", "cyan", "pink", "orange"]]
    ex = reranker_examples(q, pos, negs, random.Random(0))
    assert [e.kind for e in ex] == ["pair_pos", "pair_neg", "list"]
    assert [e.answer for e in ex[:2]] == ["Yes", "No"]
    assert "What color is the circle?\n" in _texts(ex[0].messages) and "red" in _texts(ex[0].messages)
    assert "blue" in _texts(ex[1].messages)  # the first hard negative
    listed = _texts(ex[2].messages)
    slot = int(ex[2].answer.removeprefix("Ans: (").removesuffix(")")) - 1
    cands = [t for t in listed if t in {"red", "blue", "green", "white", "cyan", "pink", "orange"}]
    assert len(cands) == N_LISTWISE and cands[slot] == "red" and "orange" not in cands  # 5 negatives + positive


def test_positive_slot_is_uniform_over_all_positions():
    rng = random.Random(0)
    negs = [Item(f"n{i}") for i in range(10)]
    counts = Counter(reranker_examples(Item("q"), Item("p"), negs, rng)[2].answer for _ in range(6000))
    assert set(counts) == {listwise_answer(i) for i in range(N_LISTWISE)}  # the last slot occurs too
    assert all(abs(c / 6000 - 1 / 6) < 0.02 for c in counts.values())


def test_labels_cover_only_the_assistant_answer(tiny_qwen25vl, settings):
    proc = load_processor(tiny_qwen25vl)
    ex = reranker_examples(Item("<|image_1|>\nWhat color is the circle?\n", "images/SynVQA/Train/SynVQA_image_0.png"),
                           Item("red"), [Item("blue"), Item("green")], random.Random(3))  # fmt: skip
    batch = sft_batch(proc, ex, ImageLoader(settings.train_image_root))
    tok = proc.tokenizer
    for r, e in enumerate(ex):
        supervised = batch["input_ids"][r][batch["labels"][r] != -100]
        assert tok.decode(supervised) == e.answer + "<|im_end|>\n"
