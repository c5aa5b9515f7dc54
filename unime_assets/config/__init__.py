"""Settings: one typed place for paths, models and every stage's parameters.

A settings file (YAML) describes a profile. The embedded default's file is written by
`unime-assets build-default`; a real run points the same fields at local MMEB folders and
checkpoints (see configs/real.example.yaml). Method parameters default to the paper's values;
the embedded profile only shrinks compute sizes (steps, batch sizes).

Modules: `base` (strict model, range rules, error formatting, deep merge), `stages` (models, LoRA,
judges, retrieval, judging, mining, bootstrap), `training` (embedder and reranker), `operations`
(validation, maintenance, training data, evaluation, ablation), `settings` (`Settings`,
`load_settings`, `with_overrides`, `unime_home`, `default_settings_file`).
"""

from unime_assets.config.base import (
    SettingsError,
    Strict,
    deep_merge,
    format_errors,
)
from unime_assets.config.operations import (
    AblationSettings,
    EvalSettings,
    MaintenanceSettings,
    TrainingDataSettings,
    ValidationSettings,
)
from unime_assets.config.settings import (
    Settings,
    default_settings_file,
    load_settings,
    unime_home,
    with_overrides,
)
from unime_assets.config.stages import (
    ENSEMBLE,
    LEGACY_JUDGE_NAME,
    BootstrapSettings,
    EnsembleSettings,
    JudgeSettings,
    JudgeSpec,
    LoraConfig,
    MiningSettings,
    ModelSource,
    RerankerLoraConfig,
    RetrievalSettings,
)
from unime_assets.config.training import (
    IMAGE_RESOLUTIONS,
    RERANK_MAX_PIXELS,
    EmbedderSettings,
    RerankerSettings,
    TrainSettings,
)

__all__ = [
    "AblationSettings",
    "BootstrapSettings",
    "ENSEMBLE",
    "EmbedderSettings",
    "EnsembleSettings",
    "EvalSettings",
    "IMAGE_RESOLUTIONS",
    "JudgeSettings",
    "JudgeSpec",
    "LEGACY_JUDGE_NAME",
    "LoraConfig",
    "MaintenanceSettings",
    "MiningSettings",
    "ModelSource",
    "RERANK_MAX_PIXELS",
    "RerankerLoraConfig",
    "RerankerSettings",
    "RetrievalSettings",
    "Settings",
    "SettingsError",
    "Strict",
    "TrainSettings",
    "TrainingDataSettings",
    "ValidationSettings",
    "deep_merge",
    "default_settings_file",
    "format_errors",
    "load_settings",
    "unime_home",
    "with_overrides",
]
