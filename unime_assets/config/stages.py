"""Settings of the models and of stages 1-3: checkpoints, LoRA, judges and their ensemble, retrieval,
judging, mining, and the embedded default's bootstrap."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from unime_assets.config.base import Strict


class ModelSource(Strict):
    path: str | None = None
    trust_remote_code: bool = False  # never implied: remote code runs only when configured


class LoraConfig(Strict):
    ranges = {"r": ((">=", 1),), "alpha": ((">", 0),), "dropout": ((">=", 0), ("<", 1))}

    enabled: bool = True
    r: int = 16
    alpha: int = 64
    dropout: float = 0.1
    use_dora: bool = True
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    )
    # A regex (peft `exclude_modules`, full match) of module names never wrapped, e.g. the vision tower.
    exclude_modules: str | None = None


class RerankerLoraConfig(LoraConfig):
    """The official reranker's LoRA (Rerank/scripts/train_qwen25VL_7B.sh, Rerank/arguments.py) as the
    defaults a partial `reranker.lora` mapping is merged onto."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    use_dora: bool = False
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Official: LoRA on the language model only; Qwen2.5-VL's vision MLPs share the names above.
    exclude_modules: str | None = r".*visual.*"


ENSEMBLE = "ensemble"  # mining.judge value: train on the judge ensemble
LEGACY_JUDGE_NAME = "judge"  # the one judge of a profile that still uses the single `judge:` setting


class JudgeSpec(Strict):
    """One judge of the profile's `judges` list: a local checkpoint of a supported family.

    With `bootstrap.enabled` (embedded default) `path` is the tiny base that `judge_model/<name>`
    trains; otherwise it is the judge itself."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")  # asset key part: judge_scores/<name>
    path: str | None = None
    # config.json `model_type`; "auto": read from the checkpoint. Supported: models/families.py.
    family: Literal["auto", "qwen2_vl", "qwen2_5_vl", "internvl"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    backend: Literal["hf", "vllm"] | None = None  # None: judging.backend
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _not_reserved(self) -> JudgeSpec:
        if self.name == ENSEMBLE:
            raise ValueError(f"judge name {ENSEMBLE!r} is reserved for the judge ensemble")
        return self



class EnsembleSettings(Strict):
    """How `judge_ensemble` combines the judges' scores (judging/ensemble.py has each rule)."""

    rule: Literal["mean_prob", "mean_logit", "rank_mean", "auc_weighted"] = "mean_prob"
    judges: list[str] | None = None  # None: every judge of the profile


class RetrievalSettings(Strict):
    top_k: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=1)
    # FAISS: exact inner product by default; ivf / hnsw are approximate, for pools of millions.
    index_kind: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int | None = Field(None, ge=1)  # IVF lists; None: ~4·sqrt(pool size)
    nprobe: int = Field(32, ge=1)  # IVF lists searched per query
    hnsw_m: int = Field(32, ge=2)
    ef_construction: int = Field(200, ge=1)
    ef_search: int = Field(128, ge=1)
    use_gpu: bool | None = None  # None: GPU FAISS whenever faiss sees a GPU (HNSW stays on the CPU)
    search_chunk: int = Field(4096, ge=1)  # queries per FAISS search: bounds peak memory


class JudgeSettings(Strict):
    batch_size: int = Field(32, ge=1)  # candidate suffixes (or pairs without prefix sharing) per forward pass
    backend: Literal["hf", "vllm"] = "hf"  # vllm: GPU only, optional install, see judging/vllm_backend.py
    share_prefix: bool = True  # hf: one KV-cached prefix pass per query, each image encoded once
    shard_queries: int = Field(1000, ge=1)  # queries per resumable shard
    image_cache_mb: int = Field(2048, ge=0)  # hf: vision-tower features kept per image path (LRU)
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_max_model_len: int | None = None
    vllm_max_num_seqs: int | None = None
    # Dagster pool of the `judge_scores/<name>` steps (None: none). `gpu` (one slot unless raised) for judges
    # that need a GPU to themselves; the embedded default's tiny judges score on one CPU thread (or a sliver
    # of a GPU), so its partitions score side by side in a backfill or the ablation's workers.
    pool: str | None = Field("gpu", min_length=1)

    def vllm_options(self) -> dict:
        """Keyword arguments for judging.vllm_backend.VllmJudge (None values left to vLLM's defaults)."""
        opts = {"gpu_memory_utilization": self.vllm_gpu_memory_utilization,
                "tensor_parallel_size": self.vllm_tensor_parallel_size,
                "max_model_len": self.vllm_max_model_len, "max_num_seqs": self.vllm_max_num_seqs}  # fmt: skip
        return {k: v for k, v in opts.items() if v is not None}


class MiningSettings(Strict):
    """Hard-negative strategy and its parameters (see unime_assets/mining.py for each rule and its source)."""

    # Judge scores are probabilities: beta >= 1 filters every candidate (all random fallback), a
    # negative beta keeps candidates scored above the positive (no false-negative filter).
    ranges = {"beta": ((">=", 0), ("<", 1)), "tau": ((">", 0), ("<=", 1)), "margin": ((">=", 0), ("<", 1))}

    strategy: Literal[
        "unime_v2", "topk_abs", "topk_margin_pos", "topk_perc_pos", "rank_window", "top", "random"
    ] = "unime_v2"
    # What the NV-Retriever rules (topk_*) compare; unime_v2 always filters on judge scores.
    score_source: Literal["judge", "retriever"] = "judge"
    beta: float = 0.01  # unime_v2: drop judge score > positive - beta
    step: int = Field(5, ge=1)  # unime_v2: every step-th survivor
    n_negatives: int = Field(10, ge=1)
    tau: float = 0.7  # topk_abs: keep score < tau
    margin: float = 0.05  # topk_margin_pos: keep score < positive - margin
    perc: float = Field(0.95, gt=0, le=1)  # topk_perc_pos: keep score < perc * positive
    window_start: int = Field(30, ge=0)  # rank_window: B3 skips ranks < 30 ...
    window_size: int = Field(100, ge=1)  # ... and uses the next 100
    seed: int = 0
    # Whose scores mining and training read: a judge's name, or "ensemble"; None: the first judge.
    judge: str | None = None


class BootstrapSettings(Strict):
    """Embedded default only: brief training that stands in for the pretrained models of the paper.

    `pretrained_base` first pretrains the tiny Qwen2-VL generatively (chat SFT on the image-text
    corpus `pretrain_corpus`: descriptions and visual questions), as a real MLLM has seen image-text
    data; the retriever bootstrap (in-batch InfoNCE, the VLM2Vec stand-in) and the embedder both start
    from it. The judge is bootstrapped from its own tiny base (Yes/No SFT) and the reranker from it."""

    ranges = {"retriever_steps": ((">=", 1),), "retriever_batch_size": ((">=", 1),), "retriever_lr": ((">", 0),),
              "retriever_temperature": ((">", 0),), "retriever_warmup_steps": ((">=", 0),),
              "judge_steps": ((">=", 1),), "judge_batch_size": ((">=", 1),), "judge_lr": ((">", 0),),
              "judge_processes": ((">=", 0),),
              "pretrain_steps": ((">=", 0),), "pretrain_batch_size": ((">=", 1),), "pretrain_lr": ((">", 0),)}  # fmt: skip

    enabled: bool = False
    pretrain_steps: int = 300  # 0: the embedder and retriever start from the random tiny base
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3
    pretrain_corpus: Path | None = None  # parquet of (image_path, question, answer, kind); images beside it
    retriever_steps: int = 150
    retriever_batch_size: int = 32
    retriever_lr: float = 1e-3
    retriever_warmup_steps: int | None = None  # None: a tenth of the steps
    # VLM2Vec's `--temperature 0.02` (its training scripts), the embedder's τ too: "embedder vs retriever"
    # then differs in the loss only (0.05 gave the tiny retriever ~7 points more; docs/fidelity.md note 4).
    retriever_temperature: float = 0.02
    judge_steps: int = 250
    judge_batch_size: int = 32
    judge_lr: float = 1e-3
    # The judge's SFT runs through the training launcher (torchrun ranks, like the embedder); the global
    # batch is split over them. 0: one per visible GPU, 1 on CPU.
    judge_processes: int = 0
