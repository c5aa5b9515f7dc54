"""Settings: one typed place for paths, models and every stage's parameters.

A settings file (YAML) describes a profile. The embedded default's file is written by
`unime-assets build-default`; a real run points the same fields at local MMEB folders and
checkpoints (see configs/real.example.yaml). Method parameters default to the paper's values;
the embedded profile only shrinks compute sizes (steps, batch sizes).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unime_assets.data.catalog import check_subsets, get_catalog


class SettingsError(ValueError):
    """A settings profile that cannot run: the message names each setting (and path) at fault."""


# Range rules: (operator, bound). Written as a table per section, beside the fields, so that every
# out-of-range value of a profile is reported at once, before a run starts.
Range = tuple[Literal[">", ">=", "<", "<="], float]
_OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silent default
    ranges: ClassVar[dict[str, tuple[Range, ...]]] = {}

    @model_validator(mode="after")
    def _in_range(self):
        errors = []
        rules: dict[str, tuple[Range, ...]] = {}
        for cls in reversed(type(self).__mro__):  # a subclass adds to (or overrides) its parent's rules
            rules.update(vars(cls).get("ranges", {}))
        for name, checks in rules.items():
            value = getattr(self, name)
            if value is None:  # optional settings (None = off / automatic) have no range
                continue
            for op, bound in checks:
                if not _OPS[op](float(value), float(bound)):
                    errors.append(f"{name} must be {op} {bound:g}, got {value!r}")
        if errors:
            raise ValueError("\n".join(errors))
        return self


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
    retriever_temperature: float = 0.05
    judge_steps: int = 250
    judge_batch_size: int = 32
    judge_lr: float = 1e-3


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


class ValidationSettings(Strict):
    """What happens to bad input rows (see data/validation.py): fail the materialization naming the
    file/row/field, or quarantine them into a side table. Quarantining eval rows changes a subset's
    denominator, hence `fail` by default there."""

    ranges = {"max_text_chars": ((">=", 1),)}

    train_policy: Literal["fail", "quarantine"] = "quarantine"
    eval_policy: Literal["fail", "quarantine"] = "fail"
    # verify: the file exists and its header and structure read (PNG chunks and CRCs, a JPEG's end
    # marker) without decoding pixels; open: also decodes it (slower); exists: the path only.
    check_images: Literal["none", "exists", "verify", "open"] = "verify"
    # A longer query or target text is a finding: one 10 MB text would make a 6 GB batch.
    max_text_chars: int = 16_384


class MaintenanceSettings(Strict):
    """Garbage collection of the artifacts (unime_assets/maintenance.py): stale judge shards, orphan
    temporary files, cache namespaces of retrained checkpoints. `collect_garbage`: `judge_scores`
    removes its partition's stale shards and `candidate_index` the rest after each success
    (`unime-assets recover` does the same by hand)."""

    ranges = {"tmp_age_hours": ((">", 0),), "cache_idle_days": ((">", 0),)}

    collect_garbage: bool = True
    tmp_age_hours: float = 6.0  # a temporary file this old has no live writer
    cache_idle_days: float = 30.0  # cache namespaces / reranked subsets unused this long go


class TrainingDataSettings(Strict):
    """Where the embedder and reranker get negatives and judge scores: this pipeline's
    `mined_negatives`, or an official UniME-V2 score file (stages 1-3 skipped)."""

    source: Literal["mined", "official"] = "mined"
    official_scores_file: Path | None = None  # e.g. train_data_Qwen25VL_7B_scores.json
    # Official records carry no subset; it is read from `images/<Subset>/...`, else this name.
    official_default_subset: str | None = None

    @model_validator(mode="after")
    def _file_when_official(self) -> TrainingDataSettings:
        if self.source == "official" and self.official_scores_file is None:
            raise ValueError(
                "training_data.official_scores_file is required when training_data.source is 'official'"
            )
        return self


class EvalSettings(Strict):
    ranges = {"batch_size": ((">=", 1),), "image_size": ((">=", 1),), "rerank_top_k": ((">=", 1),),
              "rerank_batch_size": ((">=", 1),), "rerank_max_pixels": ((">=", 1),),
              "rerank_max_new_tokens": ((">=", 1),), "promote_min_gain": ((">=", 0),)}  # fmt: skip

    batch_size: int = 32
    image_size: int | None = 1344  # the published setting resizes every image to 1344x1344
    rerank: bool = True
    rerank_top_k: int = 10
    rerank_batch_size: int = 8
    rerank_mode: Literal["listwise", "pairwise"] = "listwise"
    rerank_also: list[Literal["listwise", "pairwise"]] = Field(default_factory=list)  # more rows beside rerank_mode
    rerank_max_pixels: int | None = RERANK_MAX_PIXELS  # the official reranker's image budget
    rerank_max_new_tokens: int = 128  # the official eval's greedy budget
    # Listwise answers without a valid "(n)": a miss (official), or keep the embedder's order.
    rerank_unparsable: Literal["miss", "embedder_order"] = "miss"
    # A reranked row is a hit when the top candidate has the ground truth's content, (text, image)
    # (official: duplicates of the GT count), or only when it is the GT's own index.
    rerank_hit: Literal["content", "index"] = "content"
    promote_min_gain: float = 0.0  # `champion` moves only when overall P@1 improves by more than this
    zeroshot_roots: dict[str, str] = Field(default_factory=dict)  # set name -> local folder (data/zeroshot.py)

    @model_validator(mode="after")
    def _known_zeroshot_sets(self) -> EvalSettings:
        from unime_assets.data.zeroshot import ZEROSHOT_SETS

        if unknown := set(self.zeroshot_roots) - set(ZEROSHOT_SETS):
            raise ValueError(f"evaluation.zeroshot_roots: unknown set(s) {sorted(unknown)}; known: {ZEROSHOT_SETS}")
        return self


class AblationSettings(Strict):
    """The ablation job (unime_assets/ablation): embedders trained from the same base, on the same data
    and budget, differing in one factor each (variants), once per seed."""

    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)  # training (and mining) seeds
    variants: list[str] | None = None  # None: every variant (unime_assets/ablation/variants.py)
    # The grids (paper Table 6: k 4/6/8/10; Table 10: τ 0.01/0.02/0.03); the profile's own value is the
    # `unime_v2` row of each table.
    k_values: list[int] = Field(default_factory=lambda: [4, 6, 8], min_length=1)
    temperatures: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.05], min_length=1)
    mining_rules: list[Literal["unime_v2", "topk_abs", "topk_margin_pos", "topk_perc_pos", "rank_window", "top",
                               "random"]] = Field(default_factory=lambda: ["unime_v2", "topk_perc_pos", "random"],
                                                  min_length=1)  # fmt: skip
    judges: bool = True  # Table 5 rows (`judge:<name>`, `judge:ensemble`) when the profile has several judges
    baseline: str = "infonce_inbatch"  # the paired differences are taken to this variant


class Settings(Strict):
    profile: str = "real"
    catalog: Literal["mmeb", "synthetic"] = "mmeb"
    train_root: Path
    train_image_root: Path
    eval_root: Path
    eval_image_root: Path
    train_split: str = "original"
    train_subsets: list[str] | None = None  # None: every subset of the catalog
    eval_subsets: list[str] | None = None
    max_per_subset: int | None = 50_000  # the VLM2Vec cap that gives UniME-V2's 662K pairs
    retriever: ModelSource
    # Judges: a named list (`judges`), or the single `judge` of older profiles (named "judge"). After
    # validation `judge` mirrors the first judge, for code that reads one judge.
    judges: list[JudgeSpec] = Field(default_factory=list)
    judge: ModelSource | None = None
    embedder_base: ModelSource
    reranker_base: ModelSource = Field(default_factory=ModelSource)  # empty: start from the judge
    artifacts_root: Path
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    judging: JudgeSettings = Field(default_factory=JudgeSettings)
    mining: MiningSettings = Field(default_factory=MiningSettings)
    ensemble: EnsembleSettings = Field(default_factory=EnsembleSettings)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    reranker: RerankerSettings = Field(default_factory=RerankerSettings)
    training_data: TrainingDataSettings = Field(default_factory=TrainingDataSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    ablation: AblationSettings = Field(default_factory=AblationSettings)
    # The generator's ground truth of the train split (synthetic data only; None for real data): what
    # every query wants and every target means, to count the false negatives each rule removes.
    truth_file: Path | None = None
    # torch intra-op threads per CPU process (training ranks included); 0: torch's default (all cores).
    # One by default: the reduction order, hence the numbers, depend on the thread count, and two
    # threads next to another busy process spin-wait (measured 20x slower per step on 2 shared cores).
    torch_threads: int = Field(1, ge=0)

    ranges = {"max_per_subset": ((">=", 1),)}

    @model_validator(mode="after")
    def _known_subsets(self) -> Settings:
        train, evals = get_catalog(self.catalog)
        if self.train_subsets is not None:
            check_subsets(self.train_subsets, train, f"{self.catalog} train")
        if self.eval_subsets is not None:
            check_subsets(self.eval_subsets, evals, f"{self.catalog} eval")
        return self

    @model_validator(mode="after")
    def _judges(self) -> Settings:
        if not self.judges:
            if self.judge is None:
                raise ValueError("settings: configure `judges` (a list of named judges) or a single `judge`")
            self.judges = [JudgeSpec(name=LEGACY_JUDGE_NAME, path=self.judge.path,
                                     trust_remote_code=self.judge.trust_remote_code)]  # fmt: skip
        elif self.judge is not None and self.judge.path not in (None, self.judges[0].path):
            raise ValueError("settings: set either `judges` or the single `judge`, not both")
        first = self.judges[0]
        self.judge = ModelSource(path=first.path, trust_remote_code=first.trust_remote_code)
        names = [j.name for j in self.judges]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"settings: judge name(s) {dup} appear more than once in `judges`")
        if self.mining.judge is not None and self.mining.judge not in [*names, ENSEMBLE]:
            raise ValueError(f"mining.judge: {self.mining.judge!r} is neither a judge of this profile {names} "
                             f"nor {ENSEMBLE!r}")  # fmt: skip
        if unknown := sorted(set(self.ensemble.judges or []) - set(names)):
            raise ValueError(f"ensemble.judges: unknown judge(s) {unknown}; the profile has {names}")
        return self

    @property
    def judge_names(self) -> list[str]:
        return [j.name for j in self.judges]

    @property
    def ensemble_judges(self) -> list[str]:
        return self.ensemble.judges or self.judge_names

    @property
    def mining_judge(self) -> str:
        """Whose scores mining reads: a judge's name or "ensemble" (default: the first judge)."""
        return self.mining.judge or self.judges[0].name

    def judge_variants(self) -> dict[str, dict]:
        """The judge comparison (paper Table 5) as ablation variants: `judge:<name>` for every judge and
        `judge:ensemble`, each the settings overrides that train the embedder on those scores."""
        return {f"judge:{n}": {"mining": {"judge": n}} for n in [*self.judge_names, ENSEMBLE]}

    def judge_spec(self, name: str) -> JudgeSpec:
        for j in self.judges:
            if j.name == name:
                return j
        raise ValueError(f"judge {name!r} is not in the settings profile {self.profile!r} (judges: {self.judge_names}); "
                         "the code location was loaded with another settings file: point UNIME_SETTINGS at the same file")  # fmt: skip

    def judge_checkpoint(self, name: str) -> Path:
        """Where judge `name` is: bootstrapped under the artifacts root (embedded), else its configured path."""
        spec = self.judge_spec(name)
        if self.bootstrap.enabled:
            return self.asset_dir("judge_model") / name
        if not spec.path:
            raise ValueError(f"settings: the path of judge {name!r} (`judges[].path`, or `judge.path` for a single "
                             "judge) is required when bootstrap is disabled")  # fmt: skip
        return Path(spec.path)

    @model_validator(mode="after")
    def _consistent_sections(self) -> Settings:
        """Rules between sections: each would otherwise silently repeat negatives."""
        errors = []
        m, top_k = self.mining, self.retrieval.top_k
        if m.strategy in ("unime_v2", "topk_abs", "topk_margin_pos", "topk_perc_pos", "top") and m.n_negatives > top_k:
            errors.append(f"mining.n_negatives ({m.n_negatives}) must be <= retrieval.top_k ({top_k}): "
                          "the pool has too few candidates, negatives would repeat")  # fmt: skip
        if self.training_data.source == "mined" and self.embedder.k_negatives > m.n_negatives:
            errors.append(f"embedder.k_negatives ({self.embedder.k_negatives}) must be <= mining.n_negatives "
                          f"({m.n_negatives})")  # fmt: skip
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def train_subset_names(self) -> list[str]:
        return self.train_subsets or list(get_catalog(self.catalog)[0])

    @property
    def eval_subset_names(self) -> list[str]:
        return self.eval_subsets or list(get_catalog(self.catalog)[1])

    @property
    def eval_catalog(self):
        return get_catalog(self.catalog)[1]

    def asset_dir(self, name: str) -> Path:
        return self.artifacts_root / name

    # Checkpoint locations: bootstrapped models live under the artifacts root, real ones where configured.
    @property
    def embedder_base_path(self) -> Path:
        """Where the embedder (and, bootstrapped, the retriever) starts: the generatively pretrained tiny
        base of the embedded default (`pretrained_base`), else the configured pretrained MLLM."""
        if self.bootstrap.enabled and self.bootstrap.pretrain_steps > 0:
            return self.asset_dir("pretrained_base")
        return _required(self.embedder_base, "embedder_base")

    @property
    def retriever_path(self) -> Path:
        return (
            self.asset_dir("retriever_model")
            if self.bootstrap.enabled
            else _required(self.retriever, "retriever")
        )

    @property
    def judge_path(self) -> Path:
        """The first judge's checkpoint (the reranker's default base)."""
        return self.judge_checkpoint(self.judges[0].name)

    @property
    def reranker_base_path(self) -> Path:
        return Path(self.reranker_base.path) if self.reranker_base.path else self.judge_path

    def remote_code_paths(self) -> list[Path]:
        """Checkpoints whose own code may run: each source with `trust_remote_code` and what is trained
        from it (bootstrapped models, trained outputs, their registry downloads). Every loader reads
        this one list (models.loading.remote_code_allowed); nothing else is trusted."""
        out: list[Path] = []

        def add(trust: bool, path: str | None, *derived: Path) -> None:
            if trust:
                out.extend([*([Path(path)] if path else []), *derived])

        registry = self.asset_dir("registry_models")
        add(self.retriever.trust_remote_code, self.retriever.path, self.asset_dir("retriever_model"))
        for i, j in enumerate(self.judges):
            derived = [self.asset_dir("judge_model") / j.name]
            if i == 0 and not self.reranker_base.path:  # the reranker starts from the first judge
                derived += [self.asset_dir("reranker_checkpoint"), registry / "unime-v2-reranker"]
            add(j.trust_remote_code, j.path, *derived)
        add(self.embedder_base.trust_remote_code, self.embedder_base.path, self.asset_dir("embedder_checkpoint"),
            registry / "unime-v2-embedder", self.asset_dir("pretrained_base"))
        add(self.reranker_base.trust_remote_code, self.reranker_base.path, self.asset_dir("reranker_checkpoint"),
            registry / "unime-v2-reranker")
        return out


def _required(src: ModelSource, role: str) -> Path:
    if not src.path:
        raise ValueError(f"settings: `{role}.path` is required when bootstrap is disabled")
    return Path(src.path)


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def with_overrides(settings: Settings, overrides: dict) -> Settings:
    """`settings` with `overrides` deep-merged in, validated again as a whole."""
    try:
        return Settings.model_validate(deep_merge(settings.model_dump(mode="json"), overrides))
    except ValidationError as exc:
        raise SettingsError(f"invalid settings overrides {overrides}:\n" + format_errors(exc)) from None


def load_settings(path: str | os.PathLike, overrides: dict | None = None) -> Settings:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"settings file {p} not found: run `make demo` (embedded default) or point UNIME_SETTINGS at a YAML file"
        )
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping at the top level")
    try:
        return Settings.model_validate(deep_merge(raw, overrides or {}))
    except ValidationError as exc:  # one line per setting at fault, no pydantic internals
        raise SettingsError(f"invalid settings in {p}:\n" + format_errors(exc)) from None


def format_errors(exc: ValidationError) -> str:
    """One line per problem, each starting with the setting's dotted name."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        if err["type"] != "value_error":  # type, literal, missing, extra key: pydantic names the field
            lines.append(f"  {where or 'settings'}: {err['msg']} (got {err.get('input')!r:.80})")
            continue
        for part in err["msg"].removeprefix("Value error, ").split("\n"):
            # a section's rule names its own field ("steps must be ..."); other rules name the full path
            named = "." in part.split(" ", 1)[0] or not where
            lines.append(f"  {part}" if named else f"  {where}.{part}")
    return "\n".join(lines)


def unime_home() -> Path:
    return Path(os.environ.get("UNIME_HOME", Path.cwd() / ".unime")).resolve()


def default_settings_file() -> Path:
    return Path(os.environ.get("UNIME_SETTINGS", unime_home() / "embedded" / "settings.yaml"))
