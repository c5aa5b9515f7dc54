"""Judge backends behind one protocol: transformers (prefix-shared or plain batched) and vLLM.

The vLLM backend is imported on first use only (it is optional and GPU-only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from unime_assets.judging.plain import BatchedPairsJudge
from unime_assets.judging.prefix_shared import PrefixSharedJudge
from unime_assets.judging.prompt import PAIRWISE_PROMPT
from unime_assets.models.encoding import ImageLoader, Item
from unime_assets.models.families import get_family
from unime_assets.models.loading import load_model, pick_device, remote_code_allowed, resolve_dtype


class JudgeEngine(Protocol):
    """A scoring backend: (query, [candidates]) groups in, one score array per group out."""

    def score_groups(
        self, groups: Sequence[tuple[Item, Sequence[Item]]], on_pairs: Callable[[int], None] | None = None
    ) -> list[np.ndarray]: ...


def engine_id(backend: str, vllm_options: Mapping[str, Any] | None = None, dtype: str = "auto") -> str:
    """Backend and dtype: they change the numbers, so they are part of every shard's key."""
    if backend == "hf":
        return f"hf:{str(resolve_dtype(dtype, pick_device())).removeprefix('torch.')}"
    if backend == "vllm":
        return f"vllm:{(vllm_options or {}).get('dtype', dtype)}"
    raise ValueError(f"unknown judge backend {backend!r}; expected 'hf' or 'vllm'")


def make_engine(
    judge_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    backend: Literal["hf", "vllm"] = "hf",
    batch_size: int = 32,
    share_prefix: bool = True,
    image_cache_mb: int = 2048,
    prompt: str = PAIRWISE_PROMPT,
    vllm_options: Mapping[str, Any] | None = None,
    dtype: str = "auto",
    trust_remote_code: bool | None = None,
) -> JudgeEngine:
    """Load the judge once for a backend: "hf" (prefix-shared or plain batched) or "vllm" (GPU only).

    `trust_remote_code=None` follows the settings (models.loading.remote_code_allowed), like every loader.
    The prefix-shared engine reproduces Qwen-VL's M-RoPE positions; a judge of another family
    (models/families.py) is scored by the plain batched engine whatever `share_prefix` says."""
    images = ImageLoader(image_root)
    if backend == "vllm":
        from unime_assets.judging.vllm_backend import (
            VllmJudge,  # vllm is optional and GPU-only: import on use
        )

        opts = {"dtype": dtype, **dict(vllm_options or {})}
        if trust_remote_code or (trust_remote_code is None and remote_code_allowed(judge_path)):
            opts["trust_remote_code"] = True
        return VllmJudge(str(judge_path), images, prompt=prompt, **opts)
    if backend != "hf":
        raise ValueError(f"unknown judge backend {backend!r}; expected 'hf' or 'vllm'")

    lm = load_model(judge_path, role="judge", dtype=dtype, trust_remote_code=trust_remote_code)
    if share_prefix and get_family(lm.model_type).prefix_shared:
        return PrefixSharedJudge(lm.model, lm.processor, images, batch_size=batch_size,
                                 image_cache_mb=image_cache_mb, prompt=prompt)  # fmt: skip
    return BatchedPairsJudge(lm.model, lm.processor, images, batch_size=batch_size, prompt=prompt)
