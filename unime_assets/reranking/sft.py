"""Reranker SFT: the three training sequences per query and their label masks.

Two defects of the official training code are fixed on purpose (paper digest §7.2, §12): the query
and candidate texts are included in every prompt, and the positive's slot in the listwise example
is drawn uniformly over all positions (the official draw never uses the last slot and puts the
positive in the first two slots 64 % of the time).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from unime_assets.judging.prompt import pairwise_messages
from unime_assets.models.encoding import Item
from unime_assets.reranking.prompts import N_LISTWISE, images_of, listwise_answer, listwise_messages

# Qwen chat markup around the assistant turn; the tokens are looked up, never hard-coded.
_IM_START, _IM_END, _ASSISTANT_HEADER = "<|im_start|>", "<|im_end|>", "assistant\n"


@dataclass
class SFTExample:
    messages: list[dict]
    answer: str
    images: list[str]  # relative paths, in order of appearance
    kind: str  # "pair_pos", "pair_neg", "list", "judge_yes", "judge_no", "answer"




def reranker_examples(
    query: Item, positive: Item, negatives: Sequence[Item], rng: random.Random, *,
    list_sizes: tuple[int, int] | None = None, n_listwise: int = 1,
) -> list[SFTExample]:  # fmt: skip
    """The training sequences of one query (paper §7.2, with the fixes above).

    pair_pos: (query, positive) -> "Yes"; pair_neg: (query, first hard negative) -> "No";
    list: the positive among the first five hard negatives (fewer when fewer exist), at a slot drawn
    uniformly over all len(hard) + 1 positions; the negatives keep their stored order.

    `list_sizes` = (lo, hi): each listwise example holds instead a list whose length is drawn in lo..hi
    (capped by the distinct negatives + 1; the mined list's cyclic repeats dropped), so that every
    length inference shows (the embedder's top-k: 3-8 candidates on the synthetic label tasks, up to
    10) is trained; with the fixed 6 a tiny reranker answers "(5)" or "(6)" on 3- and 4-item lists.
    `n_listwise` listwise examples per query, each with its own length and slot.
    """
    if not negatives:
        raise ValueError("reranker_examples needs at least one hard negative")
    if n_listwise < 1:
        raise ValueError(f"n_listwise must be >= 1, got {n_listwise}")
    out = [
        SFTExample(pairwise_messages(query, positive), "Yes", images_of([query, positive]), "pair_pos"),
        SFTExample(
            pairwise_messages(query, negatives[0]), "No", images_of([query, negatives[0]]), "pair_neg"
        ),
    ]
    distinct = list(dict.fromkeys(n for n in negatives if n != positive)) or list(negatives[:1])
    for _ in range(n_listwise):
        if list_sizes is None:
            hard = list(negatives[: N_LISTWISE - 1])
        else:
            lo, hi = list_sizes
            size = rng.randint(min(lo, len(distinct) + 1), min(hi, len(distinct) + 1))
            hard = distinct[: size - 1]
        slot = rng.randrange(len(hard) + 1)  # uniform over every slot, including the last
        cands = hard[:slot] + [positive] + hard[slot:]
        out.append(
            SFTExample(
                listwise_messages(query, cands), listwise_answer(slot), images_of([query, *cands]), "list"
            )
        )
    return out


def sft_text(processor, example: SFTExample) -> str:
    """The full chat text: template prompt with the generation header, the answer, end of turn."""
    prompt = processor.apply_chat_template(example.messages, tokenize=False, add_generation_prompt=True)
    return prompt + example.answer + _IM_END + "\n"


def _assistant_span(
    ids: torch.Tensor, mask: torch.Tensor, im_start: int, im_end: int, header: list[int]
) -> tuple[int, int]:
    """[begin, end) of the supervised tokens of one row: the answer plus its `<|im_end|>`."""
    real = mask.nonzero().flatten()
    lo, hi = int(real[0]), int(real[-1]) + 1  # padding may sit on either side
    row = ids[lo:hi]
    starts = (row == im_start).nonzero().flatten()
    if not len(starts):
        raise ValueError("sft_batch: no <|im_start|> in a sequence (was it truncated?)")
    begin = int(starts[-1]) + 1 + len(header)
    if row[int(starts[-1]) + 1 : begin].tolist() != header:
        raise ValueError("sft_batch: the last turn is not the assistant's; the chat template is not Qwen's")
    ends = (row[begin:] == im_end).nonzero().flatten()
    if not len(ends):
        raise ValueError("sft_batch: the assistant answer has no <|im_end|> (was it truncated?)")
    return lo + begin, lo + begin + int(ends[0]) + 1


def sft_batch(processor, examples: Sequence[SFTExample], images: Callable[[str], Image.Image]):
    """Tokenised batch whose labels are -100 everywhere except the assistant answer and its `<|im_end|>`.

    Supervised: the answer tokens ("Yes", "No", "Ans: (3)") and the end-of-turn token, so the model
    learns to stop. Not supervised: the system and user turns, the image tokens, the
    "<|im_start|>assistant\\n" header (it is the generation prompt at inference), the newline the
    template writes after `<|im_end|>` (never generated) and padding. Works for left or right padding.
    """
    texts = [sft_text(processor, ex) for ex in examples]
    imgs = [images(p) for ex in examples for p in ex.images]
    batch = processor(text=texts, images=imgs or None, return_tensors="pt", padding=True)
    tok = processor.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids(_IM_START), tok.convert_tokens_to_ids(_IM_END)
    header = tok.encode(_ASSISTANT_HEADER, add_special_tokens=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, -100)
    for r in range(ids.shape[0]):
        begin, end = _assistant_span(ids[r], mask[r], im_start, im_end, header)
        labels[r, begin:end] = ids[r, begin:end]
    batch["labels"] = labels
    return batch

