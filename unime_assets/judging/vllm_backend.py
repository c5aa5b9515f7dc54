"""Optional vLLM backend for the judge (GPU only; `vllm` is not a dependency of this project).

UNTESTED: written against the documented vLLM offline API (`LLM`, `SamplingParams`, `LLM.generate`
with `{"prompt", "multi_modal_data": {"image": [...]}}` and `limit_mm_per_prompt`; docs.vllm.ai
"Multimodal Inputs" and vllm/v1/sample/sampler.py), never run here: the build machine has no GPU
and no vllm. tests/judging/test_vllm_backend.py compares it with the HF engine where both are available.

Same prompt and formula as the HF path: the message layout of `judging.prompt.pairwise_messages`, rendered
with the checkpoint's own chat template (generation prompt on); one generated token with
`allowed_token_ids=[Yes, No]` and `logprobs=20`. vLLM's default `raw_logprobs` are the model's
log-softmax before the whitelist is applied, and the sampled token (the larger of Yes/No under
greedy decoding) is always returned, so score = exp(ly) / (exp(ly) + exp(ln)) = sigmoid(ly - ln).
If the smaller one is outside the top 20 (its probability is then below the 20th token's), its
logprob is bounded by the smallest one returned: the score is then a bound, counted in
`VllmJudge.bounded`. vLLM's automatic prefix caching shares the query prefix across candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from unime_assets.judging.prompt import PAIRWISE_PROMPT, pair_images, pairwise_messages, yes_no_token_ids
from unime_assets.models.encoding import Item

TOP_LOGPROBS = 20  # vLLM's default max_logprobs


def score_from_logprobs(logprobs: dict[int, float], yes_id: int, no_id: int) -> tuple[float, bool]:
    """(score, exact) from one position's {token_id: logprob}; a missing token gets the smallest logprob
    returned (an upper bound on its true value), and `exact` is then False."""
    if not logprobs:
        raise ValueError("vLLM returned no logprobs for the first generated token")
    floor = min(logprobs.values())
    ly, ln = logprobs.get(yes_id, floor), logprobs.get(no_id, floor)
    exact = yes_id in logprobs and no_id in logprobs
    return 1.0 / (1.0 + math.exp(ln - ly)), exact


class VllmJudge:
    """`JudgeEngine` on vLLM: (query, [candidates]) groups in, score arrays out."""

    def __init__(
        self,
        judge_path: str,
        images: Callable[[str], Image.Image],
        *,
        prompt: str = PAIRWISE_PROMPT,
        requests_per_call: int = 4096,
        dtype: str = "auto",
        **llm_kwargs,
    ) -> None:
        from vllm import LLM, SamplingParams  # optional dependency: imported only when this backend is chosen

        from unime_assets.models.loading import remote_code_allowed
        from unime_assets.models.processors import load_processor

        self.processor = load_processor(judge_path)  # chat template and Yes/No ids of the checkpoint itself
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer)
        self.images, self.prompt, self.requests_per_call = images, prompt, requests_per_call
        llm_kwargs.setdefault("enable_prefix_caching", True)
        llm_kwargs.setdefault("trust_remote_code", remote_code_allowed(judge_path))  # as configured, like HF
        self.llm = LLM(model=judge_path, dtype=dtype, limit_mm_per_prompt={"image": 2}, **llm_kwargs)
        self.params = SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS, allowed_token_ids=[self.yes_id, self.no_id]
        )
        self.bounded = 0  # scores whose smaller token fell outside the returned top logprobs

    def _request(self, query: Item, cand: Item) -> dict:
        text = self.processor.apply_chat_template(
            pairwise_messages(query, cand, self.prompt), tokenize=False, add_generation_prompt=True
        )
        req: dict = {"prompt": text}
        imgs = pair_images([(query, cand)], self.images)  # query image first, as in the message
        if imgs:
            req["multi_modal_data"] = {"image": imgs}
        return req

    def score_groups(
        self, groups: Sequence[tuple[Item, Sequence[Item]]], on_pairs: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        pairs = [(q, c) for q, cands in groups for c in cands]
        flat = np.zeros(len(pairs), dtype=np.float64)
        for start in range(0, len(pairs), self.requests_per_call):
            chunk = pairs[start : start + self.requests_per_call]
            outs = self.llm.generate([self._request(q, c) for q, c in chunk], self.params, use_tqdm=False)
            for i, out in enumerate(outs):  # LLM.generate keeps input order
                first = out.outputs[0].logprobs[0]  # {token_id: Logprob} at the first generated position
                score, exact = score_from_logprobs(
                    {t: lp.logprob for t, lp in first.items()}, self.yes_id, self.no_id
                )
                flat[start + i] = score
                self.bounded += not exact
            if on_pairs is not None:
                on_pairs(len(chunk))
        bounds = np.cumsum([0, *(len(c) for _, c in groups)])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
