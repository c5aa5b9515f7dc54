"""MLLM-as-a-Judge: the paper's Yes/No prompt and score = e^yes / (e^yes + e^no).

Message layout follows the official reranker code (the judge script itself was not released):
one user turn [prompt, "Query:", query image?, query text?, "Candidate:", candidate image?,
candidate text?], Qwen chat template with the generation prompt; the score is read from the
logits of the first generated position. MMEB image placeholders are removed from the texts
because the images are given as real image slots.

Prompt and score only; the engines that compute scores at scale live beside this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from unime_assets.models.encoding import MMEB_IMAGE_PLACEHOLDER, Item

PAIRWISE_PROMPT = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
    "requirements of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'."
)
PROMPT_VERSION = "unime-v2-pairwise-1"


def judge_score_from_logits(logit_yes, logit_no) -> torch.Tensor:
    """softmax([yes, no])[0] == e^yes / (e^yes + e^no), computed stably as sigmoid(yes - no).

    Half-precision logits are upcast to float32 first: the score is a small difference of logits.
    """
    y, n = torch.as_tensor(logit_yes), torch.as_tensor(logit_no)
    dtype = torch.promote_types(torch.promote_types(y.dtype, n.dtype), torch.float32)
    return torch.sigmoid(y.to(dtype) - n.to(dtype))


def strip_placeholder(text: str) -> str:
    return text.replace(MMEB_IMAGE_PLACEHOLDER + "\n", "").replace(MMEB_IMAGE_PLACEHOLDER, "")


def item_content(item: Item) -> list[dict]:
    parts: list[dict] = []
    if item.image:
        parts.append({"type": "image"})
    text = strip_placeholder(item.text)
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def pairwise_messages(query: Item, candidate: Item, prompt: str = PAIRWISE_PROMPT) -> list[dict]:
    content = [{"type": "text", "text": prompt}, {"type": "text", "text": "Query:"}]
    content += item_content(query)
    content.append({"type": "text", "text": "Candidate:"})
    content += item_content(candidate)
    return [{"role": "user", "content": content}]


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of "Yes" and "No" looked up from the tokenizer (never hard-coded); each must be one token."""
    ids = []
    for word in ("Yes", "No"):
        toks = tokenizer.encode(word, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(
                f"judge tokenizer splits {word!r} into {len(toks)} tokens {toks}; need exactly one"
            )
        ids.append(toks[0])
    return ids[0], ids[1]


def pair_images(
    pairs: Sequence[tuple[Item, Item]], images: Callable[[str], Image.Image]
) -> list[Image.Image]:
    out = []
    for q, c in pairs:  # processor consumes images in order of appearance: query first
        if q.image:
            out.append(images(q.image))
        if c.image:
            out.append(images(c.image))
    return out


