"""Settings of ingestion, maintenance, training data, evaluation (stage 6) and the ablation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from unime_assets.config.base import Strict
from unime_assets.config.training import RERANK_MAX_PIXELS


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
