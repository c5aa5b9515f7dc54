"""The embedded default: synthetic MMEB-format data, tiny local Qwen backbones and a settings file.

Everything a laptop needs to run the whole graph without a hub or a GPU. The data is generated
in the real MMEB layouts and the models are saved with `save_pretrained`, so the pipeline reads
them through exactly the code paths used for real MMEB folders and real checkpoints.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from unime_assets.fingerprints import hash_fields
from unime_assets.io import atomic_path
from unime_assets.judging import PAIRWISE_PROMPT
from unime_assets.reranking import LISTWISE_PROMPT

# The embedded judges: name -> (tiny model family, checkpoint folder under models/). Each is
# bootstrapped by its own `judge_model/<name>` asset with the same Yes/No SFT.
EMBEDDED_JUDGES = {"qwen25vl": ("qwen2_5_vl", "tiny-qwen2.5-vl"), "internvl3": ("internvl", "tiny-internvl3")}


@dataclass(frozen=True)
class EmbeddedSize:
    n_train: int
    n_eval: int
    n_candidates: int
    overrides: dict
    judges: tuple[str, ...] = ("qwen25vl",)
    n_pretrain_images: int = 1500  # generative pretraining corpus of the tiny bases (2 examples per image)


# The embedder's budget. The retriever bootstrap gets the same (steps, batch, lr, warmup; and τ: both 0.02)
# from the same pretrained base, so "embedder vs retriever" compares the UniME-V2 loss with in-batch InfoNCE (the
# VLM2Vec stand-in), not a longer training; it is also the ablation's `infonce_inbatch` budget.
DEMO_TRAIN = {"steps": 120, "batch_size": 16, "lr": 5e-4, "warmup_steps": 10}
TEST_TRAIN = {"steps": 3, "batch_size": 4, "lr": 5e-4, "warmup_steps": 1}


# The demo's trainings on two CPU ranks; full fine-tuning of the tiny models on several ranks needs ZeRO-0
# (a trainable vision tower; training.loop.check_rank_balance). The judge SFT takes the reranker's stage.
DEMO_RANKS = {"processes": 2, "zero_stage": 0}


def _retriever_budget(train: dict) -> dict:
    return {f"retriever_{k}": v for k, v in train.items()}


# `demo` is what `make demo` builds; `test` is the reduced default the end-to-end test runs.
SIZES: dict[str, EmbeddedSize] = {
    "demo": EmbeddedSize(
        n_train=120,
        n_eval=40,
        n_candidates=8,
        overrides={
            # Pretraining: 300 steps of describe / VQA chat SFT (measured: the retriever bootstrapped from it
            # reaches 67 overall P@1 at 150x32 steps vs 60 from the random base). The tiny judge needs
            # ~1000 steps before it compares a candidate with its query reliably, pretrained base or not.
            # Two ranks (torchrun, gloo) for the judge SFT, the embedder and the reranker: a 2-core machine
            # uses both cores where one process would leave one idle (one torch thread per rank). Full
            # fine-tuning on several ranks needs ZeRO-0 (below). The judge's 1200 steps are the demo's
            # critical path: everything after it waits for its scores.
            "bootstrap": {"enabled": True, "pretrain_steps": 300, "pretrain_batch_size": 32, "pretrain_lr": 1e-3,
                          **_retriever_budget(DEMO_TRAIN), "judge_steps": 1200, "judge_batch_size": 32,
                          "judge_lr": 1e-3, "judge_processes": 2},
            # No Dagster pool for the tiny judges' scoring: one CPU thread each, so two train subsets score at
            # once (the ablation's workers, a UI backfill) instead of waiting for the one `gpu` slot.
            "judging": {"batch_size": 64, "pool": None},
            # Small budgets (steps, batch, no accumulation), a larger lr and full fine-tuning of the tiny
            # models; every other choice is the official recipe's (config/ defaults: eps loss, 672x672
            # training images, HF linear / cosine schedules, the reranker's mask, prompt and slot draw).
            # GradCache off: on a tiny CPU model it is 5-6x slower and memory is no issue.
            # Native training images, like the demo's evaluation (`image_size: None`): the official 672x672
            # squash (`mid`) of the 56-112 px synthetic images trains at another resolution than the eval sees
            # (one seed on the demo's training set: overall P@1 28.6 at `mid` vs 36.1 native; 170 s vs 48 s).
            "embedder": {**DEMO_TRAIN, "gradcache_chunk": 0, "image_resolution": "native", "lora": {"enabled": False},
                         **DEMO_RANKS},
            # Listwise lists of every length the top-10 shows (the eval rows hold 3-8 candidates).
            # The evaluation's pairwise wording in training too: the official training prompt's typo
            # ("responed") is a different token sequence the tiny reranker does not generalise across
            # (one seed: pairwise reranking 28.6 with the official wording, 42.5 with the eval's).
            # The answer and its <|im_end|> supervised, as in the judge it starts from: the official mask
            # also supervises "<|im_start|>assistant\n" and the closing newline, so the Yes/No token is 1
            # of 6 supervised tokens instead of 1 of 2 (reranker seeds 42, 1, 2 on one demo training set:
            # pairwise P@1 44.0 +- 1.3 official, 48.6 +- 1.3 answer-only; the embedder alone 43.9).
            "reranker": {"steps": 150, "batch_size": 8, "grad_accum": 1, "lr": 5e-4, "warmup_steps": 10, "list_sizes": [2, 10],
                         "listwise_per_query": 1, "pairwise_prompt": "judge", "label_mask": "answer_eos",
                         "lora": {"enabled": False}, **DEMO_RANKS},
            # Both reranking modes are reported; pairwise is the row the demo reads (README: measured).
            "evaluation": {"image_size": None, "batch_size": 64, "rerank_mode": "pairwise",
                           "rerank_also": ["listwise"]},
        },
    ),  # fmt: skip
    "test": EmbeddedSize(
        n_train=12,
        n_eval=6,
        n_candidates=5,
        n_pretrain_images=40,
        overrides={
            "bootstrap": {"enabled": True, "pretrain_steps": 3, "pretrain_batch_size": 4, **_retriever_budget(TEST_TRAIN),
                          "judge_steps": 4, "judge_batch_size": 8},
            "retrieval": {"top_k": 12},
            "mining": {"n_negatives": 4, "step": 2},
            "embedder": {**TEST_TRAIN, "k_negatives": 2, "gradcache_chunk": 4, "lora": {"enabled": False}},
            # 4 steps: enough for the end-to-end test to tell the cosine schedule from the linear one.
            "reranker": {"steps": 4, "batch_size": 3, "grad_accum": 1, "lr": 5e-4, "warmup_steps": 1, "list_sizes": [2, 4],
                         "lora": {"enabled": False}},
            "evaluation": {"image_size": None, "rerank_top_k": 4, "rerank_also": ["pairwise"]},
            "ablation": {"seeds": [1, 2], "k_values": [2, 4]},
        },
    ),  # fmt: skip
}


# `ablation`: the demo with a second judge of another family (a tiny InternVL3), for the judge
# comparison (Table 5); kept out of the demo, whose time it would raise by a second judge bootstrap.
SIZES["ablation"] = replace(SIZES["demo"], judges=("qwen25vl", "internvl3"))


# Fixed chat phrases that become single tokens of the tiny tokenizer (see models.tiny.build_tokenizer).
TOKENIZER_PHRASES = [PAIRWISE_PROMPT, LISTWISE_PROMPT, "Query:", "Candidate:", "Candidates:",
                     "You are a helpful assistant."]  # fmt: skip


def tokenizer_corpus(texts: list[str]) -> list[str]:
    """Synthetic texts plus the judge/reranker answers, so "Yes", "No" and "Ans: (i)" are few tokens."""
    answers = ["Yes", "No"] * 200 + [f"Ans: ({i})" for i in range(1, 11)] * 40
    return texts + answers + ["system\n", "user\n", "assistant\n"] * 50


def _read_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def build_embedded_default(home: str | Path, size: str = "demo", *, seed: int = 0,
                           judges: tuple[str, ...] | None = None) -> Path:  # fmt: skip
    """Write data, tiny base checkpoints and `settings.yaml` under `home`; returns the settings path.

    `judges` (names of EMBEDDED_JUDGES) overrides the size's judges. Idempotent: existing data with the
    same parameters and existing checkpoints are kept.
    """
    from unime_assets.data.synthetic import corpus_texts, generate, generate_pretraining, pretraining_texts
    from unime_assets.models.tiny import build_tiny_checkpoint, build_tokenizer

    if size not in SIZES:
        raise ValueError(f"unknown embedded size {size!r}; expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    judges = tuple(judges or spec.judges)
    if unknown := sorted(set(judges) - set(EMBEDDED_JUDGES)):
        raise ValueError(f"unknown embedded judge(s) {unknown}; expected some of {sorted(EMBEDDED_JUDGES)}")
    home = Path(home).resolve()
    layout = generate(home / "data", n_train=spec.n_train, n_eval=spec.n_eval, n_candidates=spec.n_candidates, seed=seed)
    corpus = generate_pretraining(home / "data", n_images=spec.n_pretrain_images, seed=seed)
    models_dir = home / "models"
    qwen2vl, qwen25vl = models_dir / "tiny-qwen2-vl", models_dir / "tiny-qwen2.5-vl"
    tiny_judges = {name: models_dir / EMBEDDED_JUDGES[name][1] for name in judges}
    texts = tokenizer_corpus(corpus_texts(layout) + pretraining_texts(corpus))
    # The checkpoints depend on the tokenizer's corpus: other data (another generator version, size or
    # seed) rebuilds them, so an old home never mixes stale checkpoints with new data.
    models_key = hash_fields("tiny-models", seed, json.dumps(texts), json.dumps(TOKENIZER_PHRASES))
    stamp = models_dir / "models_key.json"
    if _read_key(stamp) != models_key:
        shutil.rmtree(models_dir, ignore_errors=True)
    if not all((p / "config.json").exists() for p in [qwen2vl, qwen25vl, *tiny_judges.values()]):
        tok = build_tokenizer(texts, phrases=TOKENIZER_PHRASES)
        if not (qwen2vl / "config.json").exists() or not (qwen25vl / "config.json").exists():
            build_tiny_checkpoint(qwen2vl, tok, family="qwen2_vl", seed=seed)
            build_tiny_checkpoint(qwen25vl, tok, family="qwen2_5_vl", seed=seed + 1)
        for i, (name, path) in enumerate(tiny_judges.items()):
            if not (path / "config.json").exists():  # the same BPE; its family's tokens and template
                build_tiny_checkpoint(path, tok, family=EMBEDDED_JUDGES[name][0], seed=seed + 2 + i)
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps({"key": models_key}))
    settings = {
        "profile": f"embedded-{size}",
        "catalog": "synthetic",
        "train_root": str(layout.train_root),
        "train_image_root": str(layout.train_root),
        "eval_root": str(layout.eval_root),
        "eval_image_root": str(layout.eval_image_root),
        "max_per_subset": None,
        # Stand-ins for VLM2Vec (retriever) and Qwen2.5-VL-7B (judge), bootstrapped by their assets.
        "retriever": {"path": str(qwen2vl)},
        "judges": [{"name": name, "path": str(path)} for name, path in tiny_judges.items()],
        "embedder_base": {"path": str(qwen2vl)},
        "artifacts_root": str(home / "assets"),
        "truth_file": str(layout.truth_file),
        **spec.overrides,
    }
    settings["bootstrap"] = {**settings["bootstrap"], "pretrain_corpus": str(corpus)}
    path = home / "settings.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path
