"""Two judge families score the same pairs: each family's fast/batched engine equals its plain
one-pair-per-pass reference, Yes/No ids come from each tokenizer, and the family facts live in one place."""

from __future__ import annotations

import numpy as np
import pytest
from judge_cases import mixed_groups, write_images

from unime_assets.judging import BatchedPairsJudge, PrefixSharedJudge, make_engine, score_pairs_plain
from unime_assets.judging.prompt import yes_no_token_ids
from unime_assets.models.encoding import ImageLoader, Item
from unime_assets.models.families import FAMILIES, family_of, get_family
from unime_assets.models.loading import load_model


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> ImageLoader:
    return write_images(tmp_path_factory.mktemp("family_images"), seed=1)


@pytest.mark.parametrize("judge_fixture", ["tiny_qwen25vl", "tiny_internvl"])
def test_each_family_scores_the_same_pool_equal_to_its_plain_reference(judge_fixture, request, images):
    path = request.getfixturevalue(judge_fixture)
    family = family_of(path)
    engine = make_engine(path, images.root, batch_size=3, share_prefix=True)
    # the prefix-shared engine reproduces Qwen-VL's M-RoPE; other families get the plain batched one
    assert isinstance(engine, PrefixSharedJudge if family.prefix_shared else BatchedPairsJudge)
    groups = mixed_groups()
    ours = np.concatenate(engine.score_groups(groups))
    pairs = [(q, c) for q, cands in groups for c in cands]
    plain = score_pairs_plain(engine.model, engine.processor, pairs, images)
    assert np.abs(ours - plain).max() <= 1e-4
    assert ours.std() > 1e-3  # scores differ between pairs: a misaligned batch would show
    if not family.prefix_shared:  # batched engine: left-padded batches of mixed lengths and images
        batched = np.concatenate(make_engine(path, images.root, batch_size=3, share_prefix=False).score_groups(groups))
        np.testing.assert_allclose(batched, ours, atol=1e-6)


def test_the_two_tiny_judges_are_different_families_with_their_own_tokens(tiny_qwen25vl, tiny_internvl):
    qwen, internvl = load_model(tiny_qwen25vl, role="judge"), load_model(tiny_internvl, role="judge")
    assert (family_of(tiny_qwen25vl).model_type, family_of(tiny_internvl).model_type) == ("qwen2_5_vl", "internvl")
    assert type(internvl.model).__name__ == "InternVLForConditionalGeneration"
    tok = internvl.processor.tokenizer
    for word, token in (("Yes", "Yes"), ("No", "No")):
        assert tok.decode([yes_no_token_ids(tok)[word == "No"]]) == token
    # InternVL's processor reads its named image tokens from the tokenizer; Qwen's placeholder is another token
    assert tok.context_image_token == "<IMG_CONTEXT>" == internvl.image_token == get_family("internvl").image_token
    assert internvl.model.config.image_token_id == tok.context_image_token_id
    assert internvl.model.config.image_token_id != qwen.model.config.image_token_id
    text = internvl.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Query:"}]}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert text == "<|im_start|>user\n<IMG_CONTEXT>\nQuery:<|im_end|>\n<|im_start|>assistant\n"
    assert set(FAMILIES) == {"qwen2_vl", "qwen2_5_vl", "internvl"}
    with pytest.raises(ValueError, match="unknown model family 'llava'"):
        get_family("llava")


def test_configured_dtype_reaches_the_engine_and_the_shard_key(tiny_internvl, images):
    import torch

    from unime_assets.judging import engine_id

    engine = make_engine(tiny_internvl, images.root, dtype="bfloat16")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    assert engine_id("hf", dtype="bfloat16") == "hf:bfloat16" != engine_id("hf", dtype="float32")
    scores = engine.score_groups([(Item("a red circle"), [Item("red"), Item("", "a.png")])])[0]
    assert ((scores >= 0) & (scores <= 1)).all()
