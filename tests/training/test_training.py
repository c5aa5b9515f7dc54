"""DeepSpeed training on CPU: ZeRO stages, checkpoints that load back, the loss actually decreases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unime_assets.config import LoraConfig
from unime_assets.models.encoding import Item
from unime_assets.models.loading import load_model
from unime_assets.training.embedder import EmbedderExample, embedder_loss, train_embedder
from unime_assets.training.engine import EngineConfig, deepspeed_config, lr_scheduler


def _examples():
    colours = ["red", "green", "blue", "yellow"]
    out = []
    for i, c in enumerate(colours * 2):
        q = Item(f"Represent the word for classification: {c}\n")
        cands = [Item(c)] + [Item(o) for o in colours if o != c][:2]
        out.append(EmbedderExample(q, cands, [0.9, 0.2 + 0.01 * i, 0.1]))
    return out


@pytest.mark.parametrize("stage", [0, 3])
def test_embedder_trains_and_exports_loadable_safetensors(tmp_path, tiny_qwen2vl, settings, stage):
    # lr 1e-3: the default (official) loss is bounded by -log(1e-8) per term and its gradient vanishes
    # once P saturates on a wrong candidate; at 2e-3 the tiny model overshoots into that state at
    # step 3 and stays there (the exact form, eps=0, recovers from it).
    cfg = EngineConfig(micro_batch_size=4, total_steps=12, lr=1e-3, warmup_steps=1, zero_stage=stage)
    out = tmp_path / "ckpt"
    res = train_embedder(tiny_qwen2vl, _examples(), settings.train_image_root, out, cfg)
    assert len(res.losses) == 12 and all(np.isfinite(res.losses))
    assert np.mean(res.losses[-3:]) < np.mean(res.losses[:3])  # it learns the 8 examples
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    trained = load_model(out).model
    base = load_model(tiny_qwen2vl).model
    diffs = [float((a - b).abs().max()) for a, b in zip(trained.parameters(), base.parameters(), strict=True)]
    assert max(diffs) > 0  # weights were updated and saved


def test_the_gradient_norm_is_logged_without_zero_too(tmp_path, tiny_qwen2vl, settings):
    """fp32 ZeRO-0 (the demo's multi-rank setting): DeepSpeed keeps no gradient norm there, so the loop
    takes it itself; it must be the same pre-clipping norm DeepSpeed reports under ZeRO-2 for the same
    first step (same weights, same batch)."""
    norms = {}
    for stage in (0, 2):
        cfg = EngineConfig(micro_batch_size=4, total_steps=2, lr=1e-3, warmup_steps=1, zero_stage=stage)
        res = train_embedder(tiny_qwen2vl, _examples(), settings.train_image_root, tmp_path / f"z{stage}", cfg)
        norms[stage] = res.metrics["grad_norm"]
    assert all(np.isfinite(norms[0])) and norms[0][0] > 0
    assert norms[0][0] == pytest.approx(norms[2][0], rel=1e-4)


def test_lora_adapter_and_merged_weights(tmp_path, tiny_qwen2vl, settings):
    cfg = EngineConfig(micro_batch_size=4, total_steps=2, lr=1e-3, zero_stage=2)
    out = tmp_path / "lora"
    lora = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, use_dora=True)
    train_embedder(tiny_qwen2vl, _examples(), settings.train_image_root, out, cfg, lora=lora)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    merged = load_model(out).model  # merged weights load as a plain Qwen2-VL
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_loss_modes():
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    s = torch.rand(3, 4)
    for mode in ("judge_kl", "infonce_mined", "infonce_inbatch"):
        assert torch.isfinite(embedder_loss(q, c, s, mode, 0.02))
    with pytest.raises(ValueError, match="unknown embedder loss"):
        embedder_loss(q, c, s, "nope", 0.02)


def test_inbatch_infonce_ignores_identical_positives():
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    c[1, 0] = c[0, 0]  # queries 0 and 1 share their positive (same class label)
    keys = torch.tensor([7, 7, 9])
    got = embedder_loss(q, c, torch.rand(3, 4), "infonce_inbatch", 0.1, pos_keys=keys)
    logits = q @ c[:, 0].T / 0.1
    expected = torch.stack([-torch.log_softmax(logits[0, [0, 2]], 0)[0],
                            -torch.log_softmax(logits[1, [1, 2]], 0)[0],
                            -torch.log_softmax(logits[2], 0)[2]]).mean()  # fmt: skip
    torch.testing.assert_close(got, expected)


def test_deepspeed_config_values():
    cfg = deepspeed_config(EngineConfig(micro_batch_size=8, total_steps=100, lr=1e-4, warmup_steps=10,
                                        grad_accum=2, zero_stage=3, bf16=False))  # fmt: skip
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["optimizer"]["params"]["torch_adam"] is True  # no JIT-compiled Adam on CPU
    assert not cfg["bf16"]["enabled"]
    assert "scheduler" not in cfg  # the HF schedule is passed to deepspeed.initialize (test_lr_schedules_*)
    # GradCache: every chunk's backward is a DeepSpeed micro-step, accumulated up to the optimizer step.
    gc_cfg = EngineConfig(micro_batch_size=8, total_steps=100, grad_accum=2)
    gc = deepspeed_config(gc_cfg, backwards_per_micro_batch=5)
    assert gc["gradient_accumulation_steps"] == 10
    with pytest.raises(ValueError, match="zero_stage"):
        EngineConfig(micro_batch_size=1, total_steps=1, zero_stage=4)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedules_are_the_hf_trainer_ones(schedule):
    """Step k of T runs at lr * f(k): k / W in the warmup (step 0 at lr 0, as the HF Trainer does),
    then (T - k) / (T - W) for linear, 0.5 (1 + cos(pi (k - W) / (T - W))) for cosine."""
    import math

    total, warm, lr = 20, 3, 2e-5
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = lr_scheduler(EngineConfig(micro_batch_size=1, total_steps=total, lr=lr, warmup_steps=warm,
                                      lr_schedule=schedule))(opt)  # fmt: skip
    got = []
    for _ in range(total):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    frac = [(k - warm) / (total - warm) for k in range(total)]
    decay = [1 - f for f in frac] if schedule == "linear" else [0.5 * (1 + math.cos(math.pi * f)) for f in frac]
    want = [lr * (k / warm if k < warm else decay[k]) for k in range(total)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[0] == 0.0 and max(got) == pytest.approx(lr)
    with pytest.raises(ValueError, match="lr_schedule"):
        EngineConfig(micro_batch_size=1, total_steps=2, lr_schedule="constant")
