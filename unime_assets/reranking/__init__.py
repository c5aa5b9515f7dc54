"""Stage 5 of UniME-V2: the reranker (Qwen2.5-VL), trained by pairwise + listwise SFT.

Per query three SFT sequences: (query, positive) → "Yes", (query, first hard negative) → "No",
and the positive among five hard negatives → "Ans: (i)", with the official training code's prompt
wording, slot draw, label mask and image budget by default. At evaluation the embedder's top-10 is
reordered listwise (greedy answer, first "(n)") or pairwise (each candidate by P(Yes)).

Modules: `prompts` (listwise prompt and messages), `sft` (training examples and label masks),
`rerank` (reranking at evaluation, the image budget).

Public functions: `reranker_examples`, `sft_batch`, `collate_sft`, `sft_text`, `listwise_messages`,
`listwise_answer`, `rerank_listwise`, `rerank_pairwise`.
"""

from unime_assets.reranking.prompts import (
    LISTWISE_PROMPT,
    N_LISTWISE,
    RERANK_MODES,
    TRAIN_PAIRWISE_PROMPT,
    images_of,
    listwise_answer,
    listwise_messages,
)
from unime_assets.reranking.rerank import (
    RERANK_MAX_PIXELS,
    MaxPixels,
    rerank_listwise,
    rerank_pairwise,
    smart_resize,
)
from unime_assets.reranking.sft import (
    LABEL_MASKS,
    PAIRWISE_PROMPTS,
    SLOT_DRAWS,
    SFTExample,
    collate_sft,
    listwise_slot,
    reranker_examples,
    sft_batch,
    sft_text,
)

__all__ = [
    "LABEL_MASKS",
    "LISTWISE_PROMPT",
    "N_LISTWISE",
    "PAIRWISE_PROMPTS",
    "RERANK_MAX_PIXELS",
    "RERANK_MODES",
    "SLOT_DRAWS",
    "TRAIN_PAIRWISE_PROMPT",
    "MaxPixels",
    "SFTExample",
    "collate_sft",
    "images_of",
    "listwise_answer",
    "listwise_messages",
    "listwise_slot",
    "rerank_listwise",
    "rerank_pairwise",
    "reranker_examples",
    "sft_batch",
    "sft_text",
    "smart_resize",
]
