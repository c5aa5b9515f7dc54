"""The profile: `Settings` (paths, models and every section), loading a YAML file with overrides,
and where the project's state lives by default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from unime_assets.config import operations, stages, training
from unime_assets.config.base import SettingsError, Strict, deep_merge, format_errors
from unime_assets.data.catalog import check_subsets, get_catalog


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
    artifacts_root: Path
    # Stage 1: the retriever and the candidate search.
    retriever: stages.ModelSource
    retrieval: stages.RetrievalSettings = Field(default_factory=stages.RetrievalSettings)
    # Stage 2. Judges: a named list (`judges`), or the single `judge` of older profiles (named "judge").
    # After validation `judge` mirrors the first judge, for code that reads one judge.
    judges: list[stages.JudgeSpec] = Field(default_factory=list)
    judge: stages.ModelSource | None = None
    judging: stages.JudgeSettings = Field(default_factory=stages.JudgeSettings)
    ensemble: stages.EnsembleSettings = Field(default_factory=stages.EnsembleSettings)
    # Stage 3.
    mining: stages.MiningSettings = Field(default_factory=stages.MiningSettings)
    # Stages 4-5: where training starts, what it reads, the two trainings.
    embedder_base: stages.ModelSource
    reranker_base: stages.ModelSource = Field(default_factory=stages.ModelSource)  # empty: start from the judge
    bootstrap: stages.BootstrapSettings = Field(default_factory=stages.BootstrapSettings)
    training_data: operations.TrainingDataSettings = Field(default_factory=operations.TrainingDataSettings)
    embedder: training.EmbedderSettings = Field(default_factory=training.EmbedderSettings)
    reranker: training.RerankerSettings = Field(default_factory=training.RerankerSettings)
    # Ingestion, stage 6, housekeeping, the ablation job.
    validation: operations.ValidationSettings = Field(default_factory=operations.ValidationSettings)
    evaluation: operations.EvalSettings = Field(default_factory=operations.EvalSettings)
    maintenance: operations.MaintenanceSettings = Field(default_factory=operations.MaintenanceSettings)
    ablation: operations.AblationSettings = Field(default_factory=operations.AblationSettings)
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
            self.judges = [stages.JudgeSpec(name=stages.LEGACY_JUDGE_NAME, path=self.judge.path,
                                     trust_remote_code=self.judge.trust_remote_code)]  # fmt: skip
        elif self.judge is not None and self.judge.path not in (None, self.judges[0].path):
            raise ValueError("settings: set either `judges` or the single `judge`, not both")
        first = self.judges[0]
        self.judge = stages.ModelSource(path=first.path, trust_remote_code=first.trust_remote_code)
        names = [j.name for j in self.judges]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"settings: judge name(s) {dup} appear more than once in `judges`")
        if self.mining.judge is not None and self.mining.judge not in [*names, stages.ENSEMBLE]:
            raise ValueError(f"mining.judge: {self.mining.judge!r} is neither a judge of this profile {names} "
                             f"nor {stages.ENSEMBLE!r}")  # fmt: skip
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
        return {f"judge:{n}": {"mining": {"judge": n}} for n in [*self.judge_names, stages.ENSEMBLE]}

    def judge_spec(self, name: str) -> stages.JudgeSpec:
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
        # Full fine-tuning trains the vision tower, which ZeRO 1-3 cannot reduce across ranks
        # (training.loop.check_rank_balance); said here, before any launch.
        e, r, b = self.embedder, self.reranker, self.bootstrap
        full_ft = [("embedder", e.processes, "embedder", e.zero_stage, not e.lora.enabled, ", or embedder.lora on the language model"),
                   ("reranker", r.processes, "reranker", r.zero_stage, not r.lora.enabled, ", or reranker.lora on the language model"),
                   ("bootstrap.judge", b.judge_processes, "reranker", r.zero_stage, b.enabled, "")]  # fmt: skip
        for what, processes, zero_section, zero, full, lora in full_ft:
            if full and processes > 1 and zero != 0:
                errors.append(f"{what}: {processes} processes fine-tune every weight (vision tower included), which "
                              f"needs {zero_section}.zero_stage 0 (it is {zero}){lora}")  # fmt: skip
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


def _required(src: stages.ModelSource, role: str) -> Path:
    if not src.path:
        raise ValueError(f"settings: `{role}.path` is required when bootstrap is disabled")
    return Path(src.path)


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
    try:
        with open(p, encoding="utf-8") as fh:  # from the file object, YAML's message names it with the line
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {p} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"settings file {p} is not UTF-8 text: byte {exc.start} ({exc.reason})") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{p}: expected a mapping at the top level")
    if overrides is not None and not isinstance(overrides, dict):
        raise SettingsError(f"settings overrides must be a mapping (e.g. {{embedder: {{steps: 10}}}}), got {overrides!r}")
    try:
        return Settings.model_validate(deep_merge(raw, overrides or {}))
    except ValidationError as exc:  # one line per setting at fault, no pydantic internals
        raise SettingsError(f"invalid settings in {p}:\n" + format_errors(exc)) from None


def unime_home() -> Path:
    return Path(os.environ.get("UNIME_HOME", Path.cwd() / ".unime")).resolve()


def default_settings_file() -> Path:
    return Path(os.environ.get("UNIME_SETTINGS", unime_home() / "embedded" / "settings.yaml"))
