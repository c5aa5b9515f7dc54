"""The official recipe's training-time choices reach the trainers: the embedder's 672x672 images,
its loss eps and max_len; the reranker's image cap, label mask, prompt wording and slot draw."""

from __future__ import annotations

import pytest
from training_helpers import small_training_set

from unime_assets.training import embedder as embedder_mod
from unime_assets.training import sft as sft_mod
from unime_assets.training.data import embedder_examples, reranker_sft_examples
from unime_assets.training.embedder import train_embedder
from unime_assets.training.engine import EngineConfig
from unime_assets.training.sft import train_sft


@pytest.fixture(scope="module")
def training_set(settings):
    return small_training_set(settings, per_subset=4, k=2)


def test_embedder_gets_square_images_its_eps_and_max_len(tmp_path, settings, training_set, monkeypatch):
    seen = {"sizes": set(), "eps": set(), "max_length": set()}
    real_inputs, real_loss = embedder_mod.embed_inputs, embedder_mod.judge_alignment_loss

    def spy_inputs(items, processor, images, image_token, max_length=None):
        seen["sizes"] |= {images(it.image).size for it in items if it.image}
        seen["max_length"].add(max_length)
        return real_inputs(items, processor, images, image_token, max_length=max_length)

    def spy_loss(sims, scores, temperature, eps):
        seen["eps"].add(eps)
        return real_loss(sims, scores, temperature=temperature, eps=eps)

    monkeypatch.setattr(embedder_mod, "embed_inputs", spy_inputs)
    monkeypatch.setattr(embedder_mod, "judge_alignment_loss", spy_loss)
    cfg = EngineConfig(micro_batch_size=4, total_steps=1, lr=1e-3, zero_stage=0)
    train_embedder(settings.embedder_base.path, embedder_examples(training_set, 2), settings.train_image_root,
                   tmp_path / "e", cfg, image_size=672, loss_eps=1e-8, max_len=4096)  # fmt: skip
    assert seen == {"sizes": {(672, 672)}, "eps": {1e-8}, "max_length": {4096}}


def test_reranker_sft_gets_capped_images_and_its_mask(tmp_path, settings, tiny_qwen25vl, training_set, monkeypatch):
    from PIL import Image

    seen = {"sizes": set(), "masks": set()}
    real_batch = sft_mod.sft_batch

    def spy_batch(processor, examples, images, label_mask):
        seen["sizes"] |= {images(p).size for ex in examples for p in ex.images}
        seen["masks"].add(label_mask)
        return real_batch(processor, examples, images, label_mask)

    # Stand-in images 1344 x 896: above the 300*28*28 cap, so the official size is 588 x 392.
    monkeypatch.setattr("unime_assets.models.encoding.ImageLoader.__call__",
                        lambda self, rel: Image.new("RGB", (1344, 896)))  # fmt: skip
    monkeypatch.setattr(sft_mod, "sft_batch", spy_batch)
    examples = reranker_sft_examples(training_set, seed=0)
    cfg = EngineConfig(micro_batch_size=3, total_steps=1, lr=1e-3, zero_stage=0)
    train_sft(tiny_qwen25vl, examples, settings.train_image_root, tmp_path / "r", cfg,
              role="reranker", max_pixels=300 * 28 * 28)  # fmt: skip
    assert seen == {"sizes": {(588, 392)}, "masks": {"official"}}


def test_reranker_lora_leaves_the_vision_tower_frozen(tiny_qwen25vl):
    """Official: LoRA on the language model's linear layers only. Qwen2.5-VL's vision MLPs share the
    gate/up/down_proj names, so the default excludes `visual`; without it they would be wrapped."""
    import torch

    from unime_assets.config import RerankerSettings
    from unime_assets.models.loading import load_model
    from unime_assets.training.loop import maybe_lora

    def lora_modules(lora) -> set[str]:
        model = maybe_lora(load_model(tiny_qwen25vl, dtype=torch.float32, train=True).model, lora)
        return {n.split(".lora_")[0] for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}

    lora = RerankerSettings().lora
    wrapped = lora_modules(lora)
    assert wrapped and not any("visual" in n for n in wrapped)
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == set(lora.target_modules)
    unexcluded = lora_modules(lora.model_copy(update={"exclude_modules": None}))
    assert any("visual" in n for n in unexcluded)  # the names do match the vision tower


@pytest.mark.parametrize(("padding_side", "label_mask"), [("left", "official"), ("right", "answer_eos")])
def test_sft_loss_with_logits_at_supervised_positions_is_hfs_labels_loss(tiny_qwen25vl, settings, padding_side,
                                                                         label_mask):  # fmt: skip
    """The SFT loss computes logits only where they predict a supervised token; it must be HF's own
    `labels=` causal-LM loss (shifted, token mean): the same value and the same gradient."""
    import random

    import torch

    from unime_assets.models.encoding import ImageLoader, Item
    from unime_assets.models.loading import load_model
    from unime_assets.models.processors import load_processor
    from unime_assets.reranking import reranker_examples, sft_batch
    from unime_assets.training.sft import supervised_token_loss

    lm = load_model(tiny_qwen25vl, dtype=torch.float32, train=True)
    proc = load_processor(tiny_qwen25vl, padding_side=padding_side)
    examples = reranker_examples(Item("<|image_1|>\nWhat color is the circle?\n", "images/SynVQA/Train/SynVQA_image_0.png"),
                                 Item("red"), [Item("blue"), Item("green"), Item("a long answer " * 5)],
                                 random.Random(3))  # fmt: skip
    batch = sft_batch(proc, examples, ImageLoader(settings.train_image_root), label_mask)
    n_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < n_tokens < (batch["attention_mask"].sum() - batch["attention_mask"].shape[0]) / 2  # few supervised

    def grads(loss):
        lm.model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in lm.model.parameters() if p.grad is not None])

    hf = lm.model(**batch, use_cache=False).loss
    g_hf = grads(hf)
    ours = supervised_token_loss(lm.model, batch)
    g_ours = grads(ours)
    assert float(ours.detach()) == pytest.approx(float(hf.detach()), rel=1e-5)
    assert torch.allclose(g_ours, g_hf, rtol=1e-4, atol=1e-6)
