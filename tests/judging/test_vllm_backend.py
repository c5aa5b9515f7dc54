"""vLLM judge backend: the logprob formula everywhere; the engine itself only on a GPU with vllm installed."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from unime_assets.judging.vllm_backend import score_from_logprobs


def test_score_from_logprobs_is_the_two_way_softmax():
    yes, no = 7, 9
    lp = {yes: math.log(0.6), no: math.log(0.3), 1: math.log(0.1)}
    score, exact = score_from_logprobs(lp, yes, no)
    assert exact and score == pytest.approx(0.6 / 0.9)
    # Only Yes returned (No below the top-k): No is bounded by the smallest logprob returned
    score, exact = score_from_logprobs({yes: math.log(0.9), 1: math.log(0.01)}, yes, no)
    assert not exact and score == pytest.approx(0.9 / 0.91)
    with pytest.raises(ValueError):
        score_from_logprobs({}, yes, no)


@pytest.mark.gpu
@pytest.mark.skipif(  # decided before the fixtures build the embedded default
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="needs vllm and a CUDA device",
)
def test_vllm_scores_match_the_hf_engine(tiny_qwen25vl, settings):
    pytest.importorskip("vllm")
    from unime_assets.data.mmeb import load_train
    from unime_assets.judging import PrefixSharedJudge
    from unime_assets.judging.vllm_backend import VllmJudge
    from unime_assets.models.encoding import ImageLoader, Item
    from unime_assets.models.loading import load_model

    images = ImageLoader(settings.train_image_root)
    rows = load_train(settings.train_root, settings.train_subset_names).sample(n=12, seed=0)
    queries = [Item(q, qi) for q, qi in rows.select("qry", "qry_image_path").iter_rows()]
    cands = [Item(p, pi) for p, pi in rows.select("pos_text", "pos_image_path").iter_rows()]
    groups = [(q, cands) for q in queries[:4]]
    vllm_scores = np.concatenate(
        VllmJudge(str(tiny_qwen25vl), images, dtype="float32", gpu_memory_utilization=0.3).score_groups(
            groups
        )
    )
    lm = load_model(tiny_qwen25vl, dtype=torch.float32)
    hf_scores = np.concatenate(PrefixSharedJudge(lm.model, lm.processor, images).score_groups(groups))
    # different kernels (and vLLM's own image preprocessing): close, not bit-equal
    assert np.abs(vllm_scores - hf_scores).max() < 2e-2
