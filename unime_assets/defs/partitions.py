"""Per-dataset partitions (one per MMEB-train subset, one per MMEB-eval subset) and the judges.

Partition keys are the subset names of the settings profile the code location loads with
($UNIME_SETTINGS, else the embedded default; the synthetic catalog when that file does not exist
yet). Dagster fixes partitions when it loads the code, so the settings resource's file must list
the same subsets; assets check this and fail with both lists in the message. The profile's judge
names are fixed the same way: each judge gets its own `judge_model/<name>` and `judge_scores/<name>`
assets (separately materialized and resumable), checked against the settings file at run time; and
so are the ablation's variants and seeds (`ablation_run[variant x seed]`).
"""

import dagster as dg

from unime_assets.config import JudgeSettings, Settings, default_settings_file, load_settings
from unime_assets.data.catalog import get_catalog

DEFAULT_JUDGES = ["qwen25vl"]  # the embedded default's judge, before its settings file is written


def _profile() -> tuple[list[str], list[str], list[str], list[str], list[int], str | None]:
    from unime_assets.ablation import variant_names

    path = default_settings_file()
    if path.is_file():
        s = load_settings(path)
        return (s.train_subset_names, s.eval_subset_names, s.judge_names, variant_names(s), s.ablation.seeds,
                s.judging.pool)
    train, evals = get_catalog("synthetic")  # before `unime-assets build-default` has written the file
    variants = ["infonce_inbatch", "infonce_mined", "unime_v2"]
    return list(train), list(evals), list(DEFAULT_JUDGES), variants, [1, 2, 3], JudgeSettings().pool


# JUDGE_POOL: the Dagster pool of the judge_scores steps (settings.judging.pool), fixed at load like the rest.
TRAIN_SUBSETS, EVAL_SUBSETS, JUDGES, ABLATION_VARIANTS, ABLATION_SEEDS, JUDGE_POOL = _profile()
train_partitions = dg.StaticPartitionsDefinition(TRAIN_SUBSETS)
eval_partitions = dg.StaticPartitionsDefinition(EVAL_SUBSETS)
# The ablation: one partition per (variant, seed); the variants and seeds of the profile (settings.ablation).
ablation_partitions = dg.MultiPartitionsDefinition({
    "variant": dg.StaticPartitionsDefinition(ABLATION_VARIANTS),
    "seed": dg.StaticPartitionsDefinition([str(x) for x in ABLATION_SEEDS]),
})  # fmt: skip


def ablation_key(variant: str, seed: int) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"variant": variant, "seed": str(seed)})


def check_partition(settings: Settings, key: str, kind: str) -> None:
    names = settings.train_subset_names if kind == "train" else settings.eval_subset_names
    if key not in names:
        raise ValueError(
            f"partition {key!r} is not a {kind} subset of the settings profile {settings.profile!r} ({names}); "
            "the code location was loaded with another settings file: point UNIME_SETTINGS at the same file"
        )


def partition_metadata(settings: Settings, key: str, kind: str) -> dict[str, str]:
    """Meta-task and IND/OOD of a subset, for materialization metadata and MLflow tags."""
    train_to_eval, info = get_catalog(settings.catalog)
    eval_name = train_to_eval[key] if kind == "train" else key
    sub = info[eval_name]
    return {"subset": key, "eval_subset": eval_name, "meta_task": sub.meta_task, "split": sub.split}


def judge_key(asset: str, judge: str) -> dg.AssetKey:
    """`judge_model/<judge>` or `judge_scores/<judge>`: one asset per configured judge."""
    return dg.AssetKey([asset, judge])
