"""SFT batches collated from examples encoded once equal `sft_batch` of the same examples, for both judge
families, both padding sides, batches with and without images, and an encoding budget that runs out; a
training run gives the same losses with and without kept encodings."""

from __future__ import annotations

import random

import pytest
import torch
from training_helpers import small_training_set

from unime_assets.models.encoding import ImageLoader
from unime_assets.models.processors import load_processor
from unime_assets.reranking import collate_sft, sft_batch
from unime_assets.training import sft as sft_mod
from unime_assets.training.data import judge_bootstrap_examples, reranker_sft_examples
from unime_assets.training.engine import EngineConfig
from unime_assets.training.sft import EncodedExamples, train_sft


@pytest.fixture(scope="module")
def examples(settings):
    ts = small_training_set(settings, subsets=("SynColor", "SynCaps_t2i", "SynCaps_i2t"), per_subset=4, k=3)
    train = ts.select("pair_id", "subset", "qry", "qry_image_path", "pos_text", "pos_image_path")
    judge = judge_bootstrap_examples(train, seed=0)
    out = judge + reranker_sft_examples(ts, seed=0, list_sizes=(2, 4))
    assert any(not e.images for e in out) and any(len(e.images) > 1 for e in out)  # both kinds are drawn
    return out


def _assert_equal(got, want) -> None:
    assert sorted(got.keys()) == sorted(want.keys())  # the model takes them by name
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_collated_batches_equal_sft_batch(settings, examples, tiny_qwen25vl, tiny_internvl, family, padding_side):
    proc = load_processor(tiny_qwen25vl if family == "qwen2_5_vl" else tiny_internvl, padding_side=padding_side)
    images = ImageLoader(settings.train_image_root)
    first = examples[0]
    one = dict(sft_batch(proc, [first], images, "official"))
    budget = 3 * sum(v.numel() * v.element_size() for v in one.values())  # runs out after a few examples
    for mask in ("official", "answer_eos"):
        batches = EncodedExamples(proc, examples, images, mask, budget_bytes=budget)
        rng = random.Random(0)
        text_only = [i for i, e in enumerate(examples) if not e.images]
        with_image = next(i for i, e in enumerate(examples) if e.images)
        draws = [rng.sample(range(len(examples)), 5) for _ in range(6)]
        draws += [text_only[:3], [text_only[0], with_image], [0, 0, 1]]
        for ids in draws:  # drawn again: some from the kept encodings, some encoded anew
            _assert_equal(batches(ids), sft_batch(proc, [examples[i] for i in ids], images, mask))
        assert 0 < len(batches.kept) < len(examples) and batches.used <= budget


def test_collate_refuses_an_unknown_padding_side(settings, examples, tiny_qwen25vl):
    proc = load_processor(tiny_qwen25vl)
    enc = dict(sft_batch(proc, examples[:1], ImageLoader(settings.train_image_root)))
    with pytest.raises(ValueError, match="padding side"):
        collate_sft([enc], proc.tokenizer.pad_token_id, "middle")


def test_training_losses_do_not_depend_on_kept_encodings(tmp_path, settings, examples, tiny_qwen25vl, monkeypatch):
    """The trainer keeps encodings when it draws examples more than once; the run is the same without."""
    cfg = EngineConfig(micro_batch_size=6, total_steps=4, lr=1e-3, zero_stage=0)
    assert cfg.total_steps * cfg.micro_batch_size > len(examples[:12])  # examples recur: encodings are kept
    kept: list[int] = []
    real = EncodedExamples.__call__

    def spy(self, ids):
        kept.append(len(self.kept))
        return real(self, ids)

    monkeypatch.setattr(EncodedExamples, "__call__", spy)
    with_kept = train_sft(tiny_qwen25vl, examples[:12], settings.train_image_root, tmp_path / "a", cfg,
                          role="judge", label_mask="answer_eos")  # fmt: skip
    assert kept[-1] > 0
    monkeypatch.setattr(sft_mod, "ENCODED_BUDGET_BYTES", 0)
    kept.clear()
    without = train_sft(tiny_qwen25vl, examples[:12], settings.train_image_root, tmp_path / "b", cfg,
                        role="judge", label_mask="answer_eos")  # fmt: skip
    assert kept == [0] * cfg.total_steps
    assert with_kept.losses == without.losses

