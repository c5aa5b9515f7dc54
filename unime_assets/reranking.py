"""UniME-V2-Reranker: pairwise (Yes/No) and listwise ("Ans: (i)") prompts, SFT examples, reranking.

Two defects of the official training code are fixed on purpose (paper digest §7.2, §12): the query
and candidate texts are included in every prompt, and the positive's slot in the listwise example
is drawn uniformly over all positions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from unime_assets.judging import item_content, pairwise_messages
from unime_assets.models.encoding import Item

LISTWISE_PROMPT = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, etc. "
    "Each candidate is independent of the others. Evaluate each candidate against the query, and respond with "
    "the number corresponding to the candidate that best meets the requirements of the query."
)
N_LISTWISE = 6  # positive + 5 hard negatives, as in the official code


def listwise_messages(query: Item, candidates: Sequence[Item], prompt: str = LISTWISE_PROMPT) -> list[dict]:
    content = [{"type": "text", "text": prompt}, {"type": "text", "text": "Query:"}]
    content += item_content(query)
    content.append({"type": "text", "text": "Candidates:"})
    for i, cand in enumerate(candidates, start=1):
        content.append({"type": "text", "text": f"({i}) "})
        content += item_content(cand)
    return [{"role": "user", "content": content}]


def listwise_answer(position: int) -> str:
    return f"Ans: ({position + 1})"


@dataclass
class SFTExample:
    messages: list[dict]
    answer: str
    images: list[str]  # relative paths, in order of appearance
    kind: str  # "pair_pos", "pair_neg", "list", "judge_yes", "judge_no"


def _images_of(items: Sequence[Item]) -> list[str]:
    return [it.image for it in items if it.image]


def reranker_examples(query: Item, positive: Item, negatives: Sequence[Item], rng: random.Random) -> list[SFTExample]:
    """The three training sequences of one query (paper §7.2, with the fixes above)."""
    if not negatives:
        raise ValueError("reranker_examples needs at least one hard negative")
    out = [
        SFTExample(pairwise_messages(query, positive), "Yes", _images_of([query, positive]), "pair_pos"),
        SFTExample(pairwise_messages(query, negatives[0]), "No", _images_of([query, negatives[0]]), "pair_neg"),
    ]
    hard = list(negatives[: N_LISTWISE - 1])
    slot = rng.randrange(len(hard) + 1)  # uniform over every slot, including the last
    cands = hard[:slot] + [positive] + hard[slot:]
    out.append(SFTExample(listwise_messages(query, cands), listwise_answer(slot), _images_of([query, *cands]), "list"))
    return out


def sft_batch(processor, examples: Sequence[SFTExample], images: Callable[[str], Image.Image]):
    """Tokenised batch with labels only on the assistant answer (and its end-of-turn tokens)."""
    texts = []
    for ex in examples:
        prompt = processor.apply_chat_template(ex.messages, tokenize=False, add_generation_prompt=True)
        texts.append(prompt + ex.answer + "<|im_end|>\n")
    imgs = [images(p) for ex in examples for p in ex.images]
    batch = processor(text=texts, images=imgs or None, return_tensors="pt", padding=True)
    tok = processor.tokenizer
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    header = len(tok.encode("assistant\n", add_special_tokens=False))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, -100)
    for r in range(ids.shape[0]):
        starts = (ids[r] == im_start).nonzero().flatten()
        begin = int(starts[-1]) + 1 + header  # first token after "<|im_start|>assistant\n"
        labels[r, begin:] = ids[r, begin:]
    labels[mask == 0] = -100
    batch["labels"] = labels
    return batch


@torch.inference_mode()
def rerank_listwise(
    model,
    processor,
    queries: Sequence[Item],
    candidate_lists: Sequence[Sequence[Item]],
    images: Callable[[str], Image.Image],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 8,
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
        inputs = processor(text=[prompts[i] for i in idx], images=imgs or None, return_tensors="pt", padding=True)
        inputs = inputs.to(device)
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        texts = processor.tokenizer.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(idx, texts, strict=True):
            answers[i] = text
    return answers
