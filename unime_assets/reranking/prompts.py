"""The reranker's prompts: pairwise (the judge's Yes/No prompt) and listwise ("Ans: (i)").

Message layout as in the official code: one user turn [prompt, "Query:", query image?, query text?,
"Candidates:", "(1) ", candidate 1, "(2) ", ...]; the query and candidate texts are included (the
official training code drops them by a key typo, paper digest §7.2: fixed on purpose).
"""

from __future__ import annotations

from collections.abc import Sequence

from unime_assets.judging.prompt import item_content
from unime_assets.models.encoding import Item

LISTWISE_PROMPT = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, etc. "
    "Each candidate is independent of the others. Evaluate each candidate against the query, and respond with "
    "the number corresponding to the candidate that best meets the requirements of the query."
)
# The official reranker training script's pairwise prompt (Rerank/dataset/datasets_MMEB_rerank.py),
# word for word: it differs from the judge's / evaluation's PAIRWISE_PROMPT only by the typo "responed".
TRAIN_PAIRWISE_PROMPT = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
    "requirements of the query. If it does, respond with 'Yes'; if it doesn't, responed with 'No'."
)
N_LISTWISE = 6  # positive + 5 hard negatives, as in the official code
RERANK_MODES = ("listwise", "pairwise")


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


def images_of(items: Sequence[Item]) -> list[str]:
    """Image paths of the items that have one, in order of appearance in the prompt."""
    return [it.image for it in items if it.image]
