"""Reranker data: the official label mask, prompt wording and positive-slot draw by default (the
answer-only mask, the judge's wording and a uniform slot as options), texts included."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from scipy.stats import chisquare

from unime_assets.judging import PAIRWISE_PROMPT
from unime_assets.models.encoding import ImageLoader, Item
from unime_assets.models.processors import load_processor
from unime_assets.reranking import (
    N_LISTWISE,
    TRAIN_PAIRWISE_PROMPT,
    MaxPixels,
    listwise_answer,
    reranker_examples,
    sft_batch,
)


def _texts(messages):
    return [p["text"] for p in messages[0]["content"] if p["type"] == "text"]


def _slot(answer: str) -> int:
    return int(answer.removeprefix("Ans: (").removesuffix(")")) - 1


def test_three_sequences_with_texts_and_answers():
    q, pos = Item("What color is the circle?\n"), Item("red")
    names = ["blue", "green", "white", "cyan", "pink", "orange"]
    ex = reranker_examples(q, pos, [Item(c) for c in names], random.Random(0))
    assert [e.kind for e in ex] == ["pair_pos", "pair_neg", "list"]
    assert [e.answer for e in ex[:2]] == ["Yes", "No"]
    # The official code drops every text (key 'txt' vs 'text'); here query and candidate texts are there.
    assert "What color is the circle?\n" in _texts(ex[0].messages) and "red" in _texts(ex[0].messages)
    assert "What color is the circle?\n" in _texts(ex[1].messages) and "blue" in _texts(ex[1].messages)
    listed = _texts(ex[2].messages)
    assert "What color is the circle?\n" in listed
    cands = [t for t in listed if t in {"red", *names}]
    slot = _slot(ex[2].answer)
    assert len(cands) == N_LISTWISE and cands[slot] == "red"
    # the first five hard negatives, in their stored order, around the positive
    assert cands[:slot] + cands[slot + 1 :] == names[:5]
    labels = [t for t in listed if t.startswith("(")]
    assert labels == [f"({i}) " for i in range(1, N_LISTWISE + 1)]


def test_images_listed_in_order_of_appearance():
    q = Item("<|image_1|>\nFind it\n", "q.png")
    pos, negs = Item("", "p.png"), [Item("", "n0.png"), Item("", "n1.png")]
    ex = reranker_examples(q, pos, negs, random.Random(1))
    assert ex[0].images == ["q.png", "p.png"] and ex[1].images == ["q.png", "n0.png"]
    slot = _slot(ex[2].answer)
    order = ["n0.png", "n1.png"]
    assert ex[2].images == ["q.png", *order[:slot], "p.png", *order[slot:]]
    with pytest.raises(ValueError):
        reranker_examples(q, pos, [], random.Random(0))


def _official_slot(rng: random.Random) -> int:
    """The official draw (paper digest §7.2): n = randint(1, 4), ans = randint(1, n + 1), 1-based."""
    n = rng.randint(1, 4)
    return rng.randint(1, n + 1) - 1


def test_positive_slot_is_uniform_over_all_positions():
    draws = 6000
    rng = random.Random(0)
    negs = [Item(f"n{i}") for i in range(10)]
    counts = Counter(
        _slot(reranker_examples(Item("q"), Item("p"), negs, rng, slot_draw="uniform")[2].answer)
        for _ in range(draws)
    )
    assert set(counts) == set(range(N_LISTWISE))  # the last slot occurs too
    observed = [counts[i] for i in range(N_LISTWISE)]
    assert chisquare(observed).pvalue > 1e-3  # consistent with uniform
    # The same test rejects the official skewed draw: it can fail.
    orng = random.Random(0)
    off = Counter(_official_slot(orng) for _ in range(draws))
    assert off[N_LISTWISE - 1] == 0
    assert chisquare([off[i] for i in range(N_LISTWISE)]).pvalue < 1e-10
    # Fewer negatives: uniform over the len(negatives) + 1 slots there are.
    few = Counter(
        _slot(reranker_examples(Item("q"), Item("p"), negs[:2], rng, slot_draw="uniform")[2].answer)
        for _ in range(3000)
    )
    assert set(few) == {0, 1, 2} and chisquare([few[i] for i in range(3)]).pvalue > 1e-3
    assert listwise_answer(0) == "Ans: (1)" and listwise_answer(5) == "Ans: (6)"


def test_positive_slot_default_is_the_official_draw():
    """Default: the official code's draw, P(slot) = .321/.321/.196/.113/.050/0 over the six slots."""
    draws = 12000
    rng = random.Random(5)
    negs = [Item(f"n{i}") for i in range(10)]
    counts = Counter(_slot(reranker_examples(Item("q"), Item("p"), negs, rng)[2].answer) for _ in range(draws))
    assert counts[N_LISTWISE - 1] == 0  # never the last slot
    probs = [sum(1 / (n + 1) for n in range(max(1, k), 5)) / 4 for k in range(N_LISTWISE - 1)]  # slot k = ans - 1
    assert probs == pytest.approx([0.3208, 0.3208, 0.1958, 0.1125, 0.05], abs=1e-4)
    observed = [counts[k] for k in range(N_LISTWISE - 1)]
    assert chisquare(observed, [p * draws for p in probs]).pvalue > 1e-3
    assert chisquare(observed).pvalue < 1e-10  # and it is far from uniform: the test can fail
    # Fewer than five negatives: the slot is clamped to the slots there are.
    few = {_slot(reranker_examples(Item("q"), Item("p"), negs[:1], rng)[2].answer) for _ in range(200)}
    assert few == {0, 1}
    with pytest.raises(ValueError, match="slot draw"):
        reranker_examples(Item("q"), Item("p"), negs, rng, slot_draw="skewed")


def test_pairwise_training_prompt_is_the_official_wording():
    """The official training script's pairwise prompt has "responed"; evaluation and the judge use
    "respond". Default: the training wording; `pairwise_prompt="judge"`: the judge's."""
    assert TRAIN_PAIRWISE_PROMPT != PAIRWISE_PROMPT
    assert TRAIN_PAIRWISE_PROMPT.replace("responed", "respond") == PAIRWISE_PROMPT
    negs = [Item("blue")]
    official = reranker_examples(Item("q"), Item("red"), negs, random.Random(0))
    judge = reranker_examples(Item("q"), Item("red"), negs, random.Random(0), pairwise_prompt="judge")
    for i in (0, 1):
        assert _texts(official[i].messages)[0] == TRAIN_PAIRWISE_PROMPT
        assert _texts(judge[i].messages)[0] == PAIRWISE_PROMPT
    assert official[2].messages == judge[2].messages  # the listwise prompt is the same in both
    with pytest.raises(ValueError, match="pairwise prompt"):
        reranker_examples(Item("q"), Item("red"), negs, random.Random(0), pairwise_prompt="paper")


def _examples_with_image():
    return reranker_examples(
        Item("<|image_1|>\nWhat color is the circle?\n", "images/SynVQA/Train/SynVQA_image_0.png"),
        Item("red"),
        [Item("blue"), Item("green")],
        random.Random(3),
    )


def _official_collator_labels(ids, pad_id: int, im_start: int):
    """The official collator's masking (Rerank/collators/MMEB_rerank.py), restated on a right-padded
    batch: labels = ids; padding -> -100; from each user turn's <|im_start|> up to the next one ->
    -100; the system turn (the first 11 tokens with Qwen's tokenizer: here measured as everything
    before the second <|im_start|>) -> -100."""
    labels = ids.clone()
    labels[labels == pad_id] = -100
    for i in range(len(labels)):
        starts = (ids[i] == im_start).nonzero(as_tuple=True)[0]
        for j in range(1, len(starts), 2):
            labels[i][starts[j] : starts[j + 1]] = -100
        labels[i][: int(starts[1])] = -100
    return labels


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_official_label_mask_supervises_the_assistant_turn(tiny_qwen25vl, settings, padding_side):
    proc = load_processor(tiny_qwen25vl, padding_side=padding_side)
    ex = _examples_with_image()
    batch = sft_batch(proc, ex, ImageLoader(settings.train_image_root))  # default: official
    tok = proc.tokenizer
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    for r, e in enumerate(ex):
        sup = labels[r] != -100
        # "<|im_start|>assistant\n" + answer + "<|im_end|>\n", one contiguous span ending at the last real token.
        assert tok.decode(ids[r][sup]) == "<|im_start|>assistant\n" + e.answer + "<|im_end|>\n"
        pos, real = sup.nonzero().flatten(), mask[r].nonzero().flatten()
        assert int(pos[-1] - pos[0]) + 1 == len(pos) and int(pos[-1]) == int(real[-1])
        assert (labels[r][mask[r] == 0] == -100).all()
    if padding_side == "right":  # the official collator's own rule gives the same labels
        pad_id = tok.pad_token_id
        assert (ids[mask == 0] == pad_id).all()
        official = _official_collator_labels(ids, pad_id, tok.convert_tokens_to_ids("<|im_start|>"))
        assert (official == labels).all()
    with pytest.raises(ValueError, match="label mask"):
        sft_batch(proc, ex, ImageLoader(settings.train_image_root), label_mask="all")


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_labels_cover_only_the_assistant_answer(tiny_qwen25vl, settings, padding_side):
    proc = load_processor(tiny_qwen25vl, padding_side=padding_side)
    ex = _examples_with_image()
    batch = sft_batch(proc, ex, ImageLoader(settings.train_image_root), label_mask="answer_eos")
    tok = proc.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert labels.shape == ids.shape
    for r, e in enumerate(ex):
        sup = labels[r] != -100
        # Supervised: exactly the answer and its end-of-turn token, one contiguous span.
        assert tok.decode(ids[r][sup]) == e.answer + "<|im_end|>"
        pos = sup.nonzero().flatten()
        assert int(pos[-1] - pos[0]) + 1 == len(pos)
        assert int(ids[r][pos[-1]]) == im_end
        assert (labels[r][sup] == ids[r][sup]).all()
        # Never supervised: padding, image tokens, the prompt before the answer, the trailing newline.
        assert (labels[r][mask[r] == 0] == -100).all()
        image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
        assert (labels[r][ids[r] == image_pad] == -100).all()
        real = mask[r].nonzero().flatten()
        assert int(pos[-1]) == int(real[-1]) - 1  # the template's "\n" after <|im_end|> is not learned
        prompt_len = int(pos[0]) - int(real[0])
        assert prompt_len > 10 and tok.decode(ids[r][int(pos[0]) - 2 : int(pos[0])]) == "assistant\n"


def test_max_pixels_shrinks_large_images_keeping_aspect():
    from PIL import Image

    big = Image.new("RGB", (1344, 672))
    wrapped = MaxPixels(lambda _: big, max_pixels=300 * 28 * 28)
    out = wrapped("x")
    assert out.size[0] * out.size[1] <= 300 * 28 * 28 and abs(out.size[0] / out.size[1] - 2.0) < 0.02
    small = Image.new("RGB", (56, 112))
    assert MaxPixels(lambda _: small)("x") is small  # already on the 28-pixel grid, within the budget
    assert MaxPixels(lambda _: big, max_pixels=None)("x") is big


@pytest.mark.parametrize(("size", "expected"), [
    ((1344, 1344), (476, 476)),  # the official eval's 1344x1344 images: 17 x 17 merged tokens
    ((1344, 672), (672, 336)),
    ((64, 64), (56, 56)),  # rounded to the 28-pixel grid
    ((30, 30), (56, 56)),  # raised to 4 * 28 * 28 pixels
    ((500, 375), (504, 364)),  # under the budget: rounded only
])  # fmt: skip
def test_max_pixels_gives_the_official_smart_resize_sizes(size, expected):
    """Sizes the official reranker collator's smart_resize(factor 28, 4*28*28 <= px <= 300*28*28) gives."""
    from PIL import Image

    out = MaxPixels(lambda _: Image.new("RGB", size))("x")
    assert out.size == expected and out.size[0] % 28 == 0 and out.size[1] % 28 == 0
    assert out.size[0] * out.size[1] <= 300 * 28 * 28


def test_variable_list_sizes_train_every_length_inference_shows():
    """list_sizes (lo, hi): listwise lists of every length lo..hi (capped by the distinct negatives + 1),
    the mined list's cyclic repeats dropped, the positive's slot valid for the list it is in."""
    rng = random.Random(0)
    distinct = [Item(f"n{i}") for i in range(6)]
    negs = [*distinct, *distinct[:4]]  # a mined list of 10 with cyclic repeats (6 distinct)
    lengths = Counter()
    for _ in range(400):
        ex = reranker_examples(Item("q"), Item("p"), negs, rng, list_sizes=(2, 10), n_listwise=2)
        assert [e.kind for e in ex] == ["pair_pos", "pair_neg", "list", "list"]
        for e in ex[2:]:
            cands = [t for t in _texts(e.messages) if t in {"p", *(n.text for n in distinct)}]
            assert len(cands) == len(set(cands)) and cands[_slot(e.answer)] == "p"
            lengths[len(cands)] += 1
    assert set(lengths) == set(range(2, 8))  # 2 .. 6 distinct negatives + the positive
    with pytest.raises(ValueError, match="n_listwise"):
        reranker_examples(Item("q"), Item("p"), negs, rng, n_listwise=0)


def test_default_lists_stay_the_official_six():
    """Without list_sizes the examples are exactly those of the official fixed-6 layout (same draws)."""
    negs = [Item(f"n{i}") for i in range(10)]
    a = reranker_examples(Item("q"), Item("p"), negs, random.Random(3))
    b = reranker_examples(Item("q"), Item("p"), negs, random.Random(3), list_sizes=None, n_listwise=1)
    assert [(e.answer, e.images, e.messages) for e in a] == [(e.answer, e.images, e.messages) for e in b]
    assert len([t for t in _texts(a[2].messages) if t.startswith("(")]) == N_LISTWISE
