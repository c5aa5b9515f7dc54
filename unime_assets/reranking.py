"""UniME-V2-Reranker: pairwise (Yes/No) and listwise ("Ans: (i)") prompts, SFT examples, reranking.

Two defects of the official training code are fixed on purpose (paper digest §7.2, §12): the query
and candidate texts are included in every prompt, and the positive's slot in the listwise example
is drawn uniformly over all positions (the official draw never uses the last slot and puts the
positive in the first two slots 64 % of the time).

Training supervises only the assistant turn's answer and its end-of-turn token (see `sft_batch`).
At evaluation the embedder's top-k is reordered either listwise (greedy generation, first "(n)"
parsed) or pairwise (each candidate scored by the reranker's P(Yes), as the judge does).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unime_assets.judging import item_content, pairwise_messages, score_pairs
from unime_assets.models.encoding import Item

__all__ = [
    "LISTWISE_PROMPT",
    "N_LISTWISE",
    "RERANK_MAX_PIXELS",
    "RERANK_MODES",
    "SFTExample",
    "MaxPixels",
    "listwise_answer",
    "listwise_messages",
    "rerank_listwise",
    "rerank_pairwise",
    "reranker_examples",
    "sft_batch",
    "sft_text",
]

LISTWISE_PROMPT = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, etc. "
    "Each candidate is independent of the others. Evaluate each candidate against the query, and respond with "
    "the number corresponding to the candidate that best meets the requirements of the query."
)
N_LISTWISE = 6  # positive + 5 hard negatives, as in the official code
RERANK_MODES = ("listwise", "pairwise")
# Qwen chat markup around the assistant turn; the tokens are looked up, never hard-coded.
_IM_START, _IM_END, _ASSISTANT_HEADER = "<|im_start|>", "<|im_end|>", "assistant\n"
# The official reranker caps images at 300*28*28 pixels (it notes that more runs out of memory listwise).
RERANK_MAX_PIXELS = 300 * 28 * 28


def listwise_messages(query: Item, candidates: Sequence[Item], prompt: str = LISTWISE_PROMPT) -> list[dict]:
    content = [{"type": "text", "text": prompt}, {"type": "text", "text": "Query:"}]
    content += item_content(query)
    content.append({"type": "text", "text": "Candidates:"})
    for i, cand in enumerate(candidates, start=1):
        content.append({"type": "text", "text": f"({i}) "})
        content += item_content(cand)
    return [{"role": "user", "content": content}]


def listwise_answer(position: int) -> str:
    """The SFT target for the positive at 0-based `position`: "Ans: (position + 1)"."""
    return f"Ans: ({position + 1})"


@dataclass
class SFTExample:
    messages: list[dict]
    answer: str
    images: list[str]  # relative paths, in order of appearance
    kind: str  # "pair_pos", "pair_neg", "list", "judge_yes", "judge_no", "answer"


def _images_of(items: Sequence[Item]) -> list[str]:
    return [it.image for it in items if it.image]


def reranker_examples(
    query: Item, positive: Item, negatives: Sequence[Item], rng: random.Random
) -> list[SFTExample]:
    """The three training sequences of one query (paper §7.2, with the fixes above).

    pair_pos: (query, positive) -> "Yes"; pair_neg: (query, first hard negative) -> "No";
    list: the positive among the first five hard negatives (fewer when fewer exist), at a slot drawn
    uniformly over all len(hard) + 1 positions; the negatives keep their stored order.
    """
    if not negatives:
        raise ValueError("reranker_examples needs at least one hard negative")
    out = [
        SFTExample(pairwise_messages(query, positive), "Yes", _images_of([query, positive]), "pair_pos"),
        SFTExample(
            pairwise_messages(query, negatives[0]), "No", _images_of([query, negatives[0]]), "pair_neg"
        ),
    ]
    hard = list(negatives[: N_LISTWISE - 1])
    slot = rng.randrange(len(hard) + 1)  # uniform over every slot, including the last
    cands = hard[:slot] + [positive] + hard[slot:]
    out.append(
        SFTExample(
            listwise_messages(query, cands), listwise_answer(slot), _images_of([query, *cands]), "list"
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


class MaxPixels:
    """Wraps an image loader: images above `max_pixels` are shrunk, keeping their aspect ratio.

    The reranker sees the query and up to ten candidate images in one prompt; at the embedder's
    1344x1344 eval size that is ~25K visual tokens, so it gets the official reranker's budget instead.
    """

    def __init__(self, images: Callable[[str], Image.Image], max_pixels: int | None = RERANK_MAX_PIXELS):
        self.images, self.max_pixels = images, max_pixels

    def __call__(self, rel: str) -> Image.Image:
        img = self.images(rel)
        w, h = img.size
        if self.max_pixels and w * h > self.max_pixels:
            scale = (self.max_pixels / (w * h)) ** 0.5
            img = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
        return img


@torch.inference_mode()
def rerank_listwise(
    model,
    processor,
    queries: Sequence[Item],
    candidate_lists: Sequence[Sequence[Item]],
    images: Callable[[str], Image.Image],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy listwise answer text per query (parse it with `evaluation.parse_listwise_answer`)."""
    device = next(model.parameters()).device
    prompts = [
        processor.apply_chat_template(listwise_messages(q, cs), tokenize=False, add_generation_prompt=True)
        for q, cs in zip(queries, candidate_lists, strict=True)
    ]
    answers = [""] * len(queries)
    order = sorted(range(len(queries)), key=lambda i: len(prompts[i]))
    pad_id = processor.tokenizer.pad_token_id
    for start in tqdm(range(0, len(order), batch_size), desc="rerank", disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        imgs = [images(p) for i in idx for p in _images_of([queries[i], *candidate_lists[i]])]
        inputs = processor(
            text=[prompts[i] for i in idx], images=imgs or None, return_tensors="pt", padding=True
        )
        inputs = inputs.to(device)
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        texts = processor.tokenizer.batch_decode(
            gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for i, text in zip(idx, texts, strict=True):
            answers[i] = text
    return answers


def rerank_pairwise(
    model,
    processor,
    queries: Sequence[Item],
    candidate_lists: Sequence[Sequence[Item]],
    images: Callable[[str], Image.Image],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> list[np.ndarray]:
    """P(Yes) of every (query, candidate) with the pairwise prompt, one array per query in list order."""
    pairs = [(q, c) for q, cs in zip(queries, candidate_lists, strict=True) for c in cs]
    if not pairs:
        return [np.zeros(0) for _ in queries]
    flat = score_pairs(model, processor, pairs, images, batch_size=batch_size, desc="rerank pairwise",
                       progress=progress)  # fmt: skip
    out, pos = [], 0
    for cs in candidate_lists:
        out.append(flat[pos : pos + len(cs)])
        pos += len(cs)
    return out
