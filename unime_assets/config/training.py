"""Training settings (stages 4-5): what every DeepSpeed loop shares, the embedder's and the
reranker's own; defaults are the official recipe (docs/fidelity.md)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from unime_assets.config.base import Strict
from unime_assets.config.stages import LoraConfig, RerankerLoraConfig


class TrainSettings(Strict):
    """What every DeepSpeed training loop shares. Defaults follow the official embedder script
    (Embedding/shells/training/train_qwen2vl.sh) and the HF Trainer defaults it runs under."""

    ranges = {"steps": ((">=", 1),), "batch_size": ((">=", 1),), "grad_accum": ((">=", 1),), "lr": ((">", 0),),
              "warmup_steps": ((">=", 0),)}  # fmt: skip

    steps: int | None = 2000  # optimizer steps (HF max_steps); None: `epochs` passes over the training set
    epochs: float = Field(1.0, gt=0)  # used only when steps is None (HF num_train_epochs)
    batch_size: int = 512  # queries per micro-step over all ranks (official: 64 per GPU x 8 GPUs)
    grad_accum: int = 1
    lr: float = 1e-4
    # HF schedules (transformers.get_scheduler), both with a linear warmup from 0.
    lr_schedule: Literal["linear", "cosine"] = "linear"
    warmup_steps: int = Field(200, ge=0)  # > 0 wins over warmup_ratio (the HF rule)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # warmup = ceil(ratio x steps) when warmup_steps is 0
    weight_decay: float = Field(0.0, ge=0)  # AdamW decoupled weight decay (HF default 0)
    grad_clip: float = Field(1.0, gt=0)  # max global gradient norm (HF max_grad_norm)
    zero_stage: int = Field(2, ge=0, le=3)
    seed: int = 42
    # Launch (training/launch.py): torchrun or deepspeed starts `processes` ranks through Dagster Pipes.
    processes: int = Field(0, ge=0)  # 0: one per visible GPU, 1 on CPU
    launcher: Literal["torchrun", "deepspeed"] = "torchrun"
    bf16: bool | None = None  # None: bf16 on CUDA, fp32 on CPU
    checkpoint_every: int = Field(50, ge=0)  # DeepSpeed checkpoint every N steps (0: off); official save_steps
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)  # a Dagster log line every N steps (MLflow gets every step)

    def total_steps(self, n_queries: int) -> int:
        """Optimizer steps: `steps`, or `epochs` over n_queries as the HF Trainer counts them
        (micro-batches per epoch, floor-divided by the accumulation, at least 1)."""
        if self.steps is not None:
            return self.steps
        if n_queries < 1:
            raise ValueError("cannot size an epoch-based schedule on an empty training set")
        per_epoch = max(math.ceil(n_queries / self.batch_size) // self.grad_accum, 1)
        return math.ceil(self.epochs * per_epoch)

    def total_warmup(self, total_steps: int) -> int:
        """Warmup steps as the HF Trainer resolves them: warmup_steps if > 0, else ceil(ratio x steps)."""
        return self.warmup_steps if self.warmup_steps > 0 else math.ceil(total_steps * self.warmup_ratio)


# The official embedder squashes every training image to a square (Embedding/src/dataset.py
# process_image): --image_resolution mid (672) for Qwen2-VL, mid_336 for LLaVA-OneVision.
IMAGE_RESOLUTIONS: dict[str, int | None] = {"high": 1344, "mid": 672, "mid_336": 336, "low": 128, "native": None}
# The official reranker collator caps every image at 300*28*28 pixels (smart_resize, aspect kept).
RERANK_MAX_PIXELS = 300 * 28 * 28


class EmbedderSettings(TrainSettings):
    ranges = {"temperature": ((">", 0),), "k_negatives": ((">=", 1),)}

    gradcache_chunk: int = Field(2, ge=0)  # sequences per GradCache chunk (paper: 2); 0: plain backward
    k_negatives: int = 8
    temperature: float = 0.02
    loss: Literal["judge_kl", "infonce_mined", "infonce_inbatch"] = "judge_kl"
    # judge_kl: log(softmax + loss_eps) on kl_div's input side as in the official loss; 0 = exact log-softmax.
    loss_eps: float = Field(1e-8, ge=0)
    # Training images: the official named sizes (squashed to a square), or "native" (processor default).
    image_resolution: Literal["high", "mid", "mid_336", "low", "native"] = "mid"
    max_len: int | None = Field(4096, ge=1)  # tokens per sequence, truncated on the right (official max_len)
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @property
    def image_size(self) -> int | None:
        return IMAGE_RESOLUTIONS[self.image_resolution]


class RerankerSettings(TrainSettings):
    """Defaults follow the official reranker script (Rerank/scripts/train_qwen25VL_7B.sh): one epoch,
    32 queries per optimizer step as 1 per GPU x 4 accumulation x 8 GPUs, cosine with 3 % warmup."""

    steps: int | None = None  # one epoch (`epochs`)
    batch_size: int = 8  # queries per micro-step over all ranks: 1 per rank on 8 processes
    grad_accum: int = 4
    ranges = {"listwise_per_query": ((">=", 1),)}
    # Listwise training lists: None, the official fixed 6 (positive + 5 hard negatives); (lo, hi): a
    # length drawn in lo..hi per example, to train the list lengths inference shows (2..rerank_top_k).
    list_sizes: tuple[int, int] | None = None
    listwise_per_query: int = 1  # listwise examples per query (official: 1), beside the two pairwise ones
    lr: float = 2e-5
    lr_schedule: Literal["linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_pixels: int | None = Field(RERANK_MAX_PIXELS, ge=28 * 28)  # None: the processor's default
    # official: supervise "<|im_start|>assistant\n" + answer + "<|im_end|>\n" (the official collator);
    # answer_eos: the answer and its <|im_end|> only.
    label_mask: Literal["official", "answer_eos"] = "official"
    # official: the training script's pairwise prompt (its wording, typo "responed" included);
    # judge: the judge's / evaluation's prompt ("respond").
    pairwise_prompt: Literal["official", "judge"] = "official"
    # official: the training script's draw (n = randint(1, 4), slot = randint(1, n + 1)); uniform: any slot.
    listwise_slot: Literal["official", "uniform"] = "official"
    lora: RerankerLoraConfig = Field(default_factory=lambda: RerankerLoraConfig())

    @model_validator(mode="after")
    def _list_sizes(self) -> RerankerSettings:
        if self.list_sizes is not None and not 2 <= self.list_sizes[0] <= self.list_sizes[1]:
            raise ValueError(f"list_sizes must be (lo, hi) with 2 <= lo <= hi, got {self.list_sizes}")
        return self

    @property
    def sequences_per_query(self) -> int:
        return 2 + self.listwise_per_query  # pairwise Yes, pairwise No, and the listwise examples
