"""One ablation run: mine with the variant's rule and judge, train the embedder, evaluate it.

Mining and the training set are the pipeline's own functions (`mine_table`, `build_training_set`) on
the shared candidate pools and judge scores; training is `training.launch.run_spec`, the code every
`torchrun` rank of `embedder_checkpoint` runs, called in this process as a world of one rank on the
CPU (no launcher: ~30 runs x ~17 s of `torchrun` start-up would not fit the ablation's 30 minutes on
two cores); evaluation is the MMEB runner of `mmeb_report`. The trained weights are deleted after the
evaluation: the ablation keeps numbers, not ~30 checkpoints.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from unime_assets.config import ENSEMBLE


@dataclass
class RunResult:
    per_subset: dict[str, float]  # P@1 (fraction) per eval subset
    aggregates: dict[str, float]  # classification ... overall (fractions)
    losses: list[float]
    train_seconds: float
    cpu_seconds: float  # this process's CPU time for mining, training and evaluation
    queries: int
    fallback_fraction: float
    extra: dict[str, float] = field(default_factory=dict)


def mining_scores(settings, judge_scores: Mapping[str, Mapping[str, pl.DataFrame]],
                  ensemble: Mapping[str, pl.DataFrame], subsets: list[str]) -> dict[str, pl.DataFrame]:  # fmt: skip
    """Per train subset, the scores `mining.judge` names: one judge's or the ensemble's."""
    source = settings.mining_judge
    tables = ensemble if source == ENSEMBLE else judge_scores.get(source, {})
    missing = [p for p in subsets if p not in tables or tables[p].is_empty()]
    if missing:
        raise ValueError(f"ablation: the scores of {source!r} are not materialized for train subset(s) {missing}")
    return {p: tables[p] for p in subsets}


def training_set_for(settings, train: pl.DataFrame, candidates: pl.DataFrame, pools: Mapping[str, pl.DataFrame],
                     scores: Mapping[str, pl.DataFrame]) -> pl.DataFrame:  # fmt: skip
    """What `mined_negatives` and `training_set` build, with the variant's mining settings."""
    from unime_assets.mining import mine_table
    from unime_assets.retrieval import check_same_index, index_digest
    from unime_assets.training.data import build_training_set

    mined, current = [], index_digest(candidates)
    for subset, js in scores.items():
        check_same_index(pools[subset], current, f"candidate_pool[{subset}]")
        check_same_index(js, current, f"judge scores of {subset} ({settings.mining_judge})")
        df = mine_table(js, pools[subset], settings.mining, n_pool=candidates.height)
        mined.append(df.with_columns(pl.Series("pos_score", js["pos_score"], pl.Float64)))
    table = pl.concat(mined)
    return build_training_set(train, candidates, table.select("pair_id", "pos_score"), table)


def train_and_evaluate(settings, training_set: pl.DataFrame, eval_df: pl.DataFrame, work_dir: str | Path, *,
                       mlflow_run_id: str = "", tracking_uri: str = "") -> RunResult:  # fmt: skip
    """Train the embedder the settings describe on `training_set` and evaluate it on `eval_df`."""
    from unime_assets.evaluation import aggregate, evaluate_model
    from unime_assets.io import write_parquet
    from unime_assets.models.loading import remote_code_allowed, set_torch_threads
    from unime_assets.training.launch import run_spec, spec_from_settings

    cpu0, work = time.process_time(), Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    data, out = work / "training_set.parquet", work / "checkpoint"
    write_parquet(training_set, data)
    base = settings.embedder_base_path
    spec = spec_from_settings("embedder", settings, settings.embedder, base=base, training_set=data, out_dir=out,
                              n_queries=training_set.height, checkpoint_every=0, mlflow_run_id=mlflow_run_id, mlflow_tracking_uri=tracking_uri,
                              trust_remote_code=remote_code_allowed(base))  # fmt: skip
    result = run_spec(spec)
    set_torch_threads(settings.torch_threads)
    ev = settings.evaluation
    res = evaluate_model(out, eval_df, settings.eval_image_root, image_size=ev.image_size, batch_size=ev.batch_size)
    per = {name: r.precision_at_1 for name, r in res.items()}
    shutil.rmtree(work, ignore_errors=True)
    return RunResult(per, aggregate(per, settings.eval_catalog), list(result.losses), result.seconds,
                     time.process_time() - cpu0, training_set.height, float(training_set["fallback"].mean()))
