"""The paper's ablations as one job: embedders trained from the same base, on the same data and budget,
differing in one factor each, once per seed (paper Tables 4, 5, 6 and 10, and the mining rules).

Modules: `variants` (each variant as settings overrides of the profile; which paper table rows it
stands in), `run` (one run: mine with the variant's rule, train in-process with the training code of
the `torchrun` ranks, evaluate with the MMEB runner), `stats` (mean ± std, the paired difference to
the baseline with a Student-t interval), `report` (`ablation.json`, markdown tables, the plot).
The Dagster assets (`ablation_run[variant x seed]`, `ablation_report`) are in defs/assets/ablation.py.
"""

from unime_assets.ablation.report import ablation_plot, summary_rows, table_markdown, write_ablation_json
from unime_assets.ablation.run import RunResult, mining_scores, train_and_evaluate, training_set_for
from unime_assets.ablation.stats import PairedDifference, mean_std, paired_difference
from unime_assets.ablation.variants import TABLES, Variant, ablation_variants, variant_names, variant_settings

__all__ = [
    "TABLES",
    "PairedDifference",
    "RunResult",
    "Variant",
    "ablation_plot",
    "ablation_variants",
    "mean_std",
    "mining_scores",
    "paired_difference",
    "summary_rows",
    "table_markdown",
    "train_and_evaluate",
    "training_set_for",
    "variant_names",
    "variant_settings",
    "write_ablation_json",
]
