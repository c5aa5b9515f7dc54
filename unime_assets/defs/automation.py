"""Automation: asset jobs, the changed-train-data schedule, the new-embedder sensor, declarative
automation of the mining chain, run retries and run time limits.

How a change of MMEB-train data reaches the mined negatives:

1. The schedule `refresh_changed_train_subsets` fingerprints each subset's source files (name, size,
   mtime of `<train_root>/<subset>/<split>-*.parquet`) and compares it with the fingerprint recorded for
   the latest `mmeb_train` materialization of that partition. It requests one `ingest_train` run per
   new or changed partition, tagged with the new fingerprint (so the next tick sees it as recorded).
2. Declarative automation carries the change on. `candidate_index` is global: its `cand_id`s number
   the unique positives of every subset, so re-reading any subset renumbers them and every partition
   of `candidate_pool` -> `judge_scores` -> `mined_negatives` built on the old index is invalid. A
   per-partition job cannot express "rebuild the index once, then re-mine every partition"; automation
   conditions can: `candidate_index` refreshes when any `mmeb_train` partition (or the retriever)
   updates, and once it is rebuilt every mining partition whose `mmeb_train` partition exists runs
   eagerly (a new subset included). Subsets never read stay untouched.
   The pool `judging.pool` names (`gpu` by default) bounds how many judge steps run at once.
3. The sensor `evaluate_new_embedder` polls the MLflow registry for `unime-v2-embedder` versions newer
   than its cursor and requests an `evaluate` run per version, tagged with the version and its URI.

Training (`train` job) is launched by hand: it is the expensive step and which data it should see is a
decision (docs/operating.md).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from unime_assets.defs.partitions import TRAIN_SUBSETS
from unime_assets.defs.resources import MlflowResource, SettingsResource
from unime_assets.fingerprints import files_stat_fingerprint
from unime_assets.tracking.registry import is_complete

EMBEDDER_MODEL = "unime-v2-embedder"  # the registered name of embedder_checkpoint (defs/assets/training.py)

FINGERPRINT_KEY = "source_fingerprint"  # mmeb_train metadata key, if the asset records it
FINGERPRINT_TAG = "unime/source_fingerprint"  # run tag set by the schedule
VERSION_TAG = "unime/embedder_version"
MODEL_URI_TAG = "unime/embedder_model_uri"

HOUR = 3600
# Run retries (instance `run_retries`, enabled in dagster.yaml) re-launch a run whose worker crashed
# (OOM kill, node loss, pre-emption); FROM_FAILURE re-executes only what had not succeeded. Failures
# inside a step are retried by the op retry policy instead (transient I/O, CUDA OOM on a busy card).
RUN_RETRIES = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"}
STEP_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def _run_tags(stage: str, max_runtime_hours: float) -> dict[str, str]:
    """`dagster/max_runtime` is read from run tags by run monitoring (enabled in dagster.yaml); asset
    tags do not reach runs. `unime/stage` lets the production queue limit runs per stage.

    The jobs pass these as `tags`, not `run_tags`: without `run_tags` a job's tags are added to every
    run it launches, and a partition backfill of a job (UI or `dagster job backfill`) copies only
    the job's `tags` into its runs; `run_tags` would leave backfill runs without retries or limits."""
    return {**RUN_RETRIES, "dagster/max_runtime": str(int(max_runtime_hours * HOUR)), "unime/stage": stage}


# --- jobs ---------------------------------------------------------------------------------------

INGEST_SELECTION = dg.AssetSelection.assets("mmeb_train")
INGEST_EVAL_SELECTION = dg.AssetSelection.assets("mmeb_eval")
# judge_model/<name>, judge_scores/<name>: one asset per judge of the profile
MODELS_SELECTION = dg.AssetSelection.assets("pretrained_base", "retriever_model") | dg.AssetSelection.key_prefixes(["judge_model"])
INDEX_SELECTION = dg.AssetSelection.assets("candidate_index")
MINING_SELECTION = dg.AssetSelection.assets("candidate_pool", "judge_ensemble", "mined_negatives") | (
    dg.AssetSelection.key_prefixes(["judge_scores"])
)
TRAIN_SELECTION = dg.AssetSelection.assets("training_set", "embedder_checkpoint", "reranker_checkpoint")
EVALUATION_SELECTION = dg.AssetSelection.groups("evaluation")
AUTOMATED_SELECTION = dg.AssetSelection.assets("candidate_index") | MINING_SELECTION

def _job(name: str, selection: dg.AssetSelection, stage: str, max_hours: float, description: str,
         **kwargs) -> dg.UnresolvedAssetJobDefinition:  # fmt: skip
    return dg.define_asset_job(name, selection=selection, tags=_run_tags(stage, max_hours),
                               description=description, **kwargs)  # fmt: skip


ingest_train_job = _job("ingest_train", INGEST_SELECTION, "ingest", 2,
                        "Read one MMEB-train subset (partition) from its source files.")  # fmt: skip
ingest_eval_job = _job("ingest_eval", INGEST_EVAL_SELECTION, "ingest", 2,
                       "Read one MMEB-eval subset (partition) from its source files.")  # fmt: skip


def _models_executor() -> dict:
    """The models job's chains are independent and long (each judge's bootstrap; pretrained_base ->
    retriever_model): where the code location runs steps in process (UNIME_EXECUTOR unset, the laptop
    default) they run in processes side by side; a configured executor (multiprocess, k8s, docker) is kept."""
    return {"executor_def": dg.multiprocess_executor} if os.environ.get("UNIME_EXECUTOR", "in_process") == "in_process" else {}


models_job = _job("models", MODELS_SELECTION, "models", 24,
                  "The retriever (stage 1) and the judges (stage 2): configured checkpoints validated, or on the "
                  "embedded default tiny models bootstrapped; each judge's held-out AUC. Its independent "
                  "chains run in processes side by side.", **_models_executor())  # fmt: skip
index_job = _job("index", INDEX_SELECTION, "index", 24,
                 "Stage 1: the global candidate index over every materialized train subset (rebuilt before "
                 "`mine` whenever a subset was added or re-read).")  # fmt: skip
mine_job = _job("mine", MINING_SELECTION, "mine", 24,
                "Stages 1-3 for one train subset: candidate pool, every judge's scores, their ensemble, mined "
                "negatives. Needs a "
                "current candidate_index; backfill chosen partitions from the UI or `dagster job backfill -j mine`.",
                op_retry_policy=STEP_RETRY)  # fmt: skip
train_job = _job("train", TRAIN_SELECTION, "train", 72,
                 "Stages 4-5: training set from the mined partitions, embedder and reranker (gpu pool); "
                 "registers new versions with alias `candidate`.")  # fmt: skip
evaluate_job = _job("evaluate", EVALUATION_SELECTION, "evaluate", 12,
                    "Stage 6: MMEB evaluation and report. Launched by `evaluate_new_embedder` per registered version.")  # fmt: skip
ablation_job = _job("ablation", dg.AssetSelection.assets("ablation_run"), "ablation", 6,
                    "The ablation's runs, one per (variant, seed) partition: backfill them (the UI, or "
                    "`unime-assets ablate`, which also materializes what they need and `ablation_report`).")  # fmt: skip
# In graph order: `unime-assets materialize` runs them one after the other (cli.py STAGES); the ablation
# job is not part of the demo graph's stages (`unime-assets ablate` runs it).
JOBS = [ingest_train_job, ingest_eval_job, models_job, index_job, mine_job, train_job, evaluate_job, ablation_job]


def _default_status() -> tuple[dg.DefaultScheduleStatus, dg.DefaultSensorStatus]:
    """Stopped unless UNIME_AUTOMATION=on: a laptop running `make ui` should not start judging or
    evaluating on its own. Production sets it (deploy/) or starts them in the UI / with the CLI."""
    on = os.environ.get("UNIME_AUTOMATION", "").lower() in {"1", "on", "true", "running"}
    return (
        dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED,
        dg.DefaultSensorStatus.RUNNING if on else dg.DefaultSensorStatus.STOPPED,
    )


# --- changed train data: schedule ----------------------------------------------------------------


def source_files(train_root: str | os.PathLike, subset: str, split: str = "original") -> list[Path]:
    """The files `mmeb_train` reads for one subset (data/mmeb.py: `<root>/<subset>/<split>-*.parquet`)."""
    folder = Path(train_root) / subset
    return sorted(p for p in folder.glob(f"{split}-*.parquet") if p.is_file())


def _latest_train_record(instance: dg.DagsterInstance, subset: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("mmeb_train"), asset_partitions=[subset]), limit=1
    ).records
    return records[0] if records else None


def _recorded_fingerprint(instance: dg.DagsterInstance, record) -> str | None:
    """The fingerprint the latest materialization was made from: its metadata if the asset records it,
    else the tag of the run that made it (runs launched by this schedule carry it)."""
    meta = record.asset_materialization.metadata if record.asset_materialization else {}
    if FINGERPRINT_KEY in meta:
        return str(meta[FINGERPRINT_KEY].value)
    run = instance.get_run_by_id(record.run_id) if record.run_id else None
    return run.tags.get(FINGERPRINT_TAG) if run else None


def changed_train_partitions(
    instance: dg.DagsterInstance,
    train_root: str | os.PathLike,
    subsets: Iterable[str],
    split: str = "original",
) -> list[tuple[str, str, str]]:
    """(subset, fingerprint, reason) for each subset that is new (never materialized) or whose source
    files differ from the ones its latest materialization read. Without a recorded fingerprint (a
    materialization from the CLI or the UI), a file modified after that materialization counts as a change."""
    out = []
    for subset in subsets:
        files = source_files(train_root, subset, split)
        if not files:
            continue  # nothing to read: mmeb_train would fail; validation reports it elsewhere
        fp = files_stat_fingerprint(files)
        record = _latest_train_record(instance, subset)
        if record is None:
            out.append((subset, fp, "new"))
            continue
        recorded = _recorded_fingerprint(instance, record)
        if recorded is not None:
            if recorded != fp:
                out.append((subset, fp, "changed"))
        elif max(p.stat().st_mtime for p in files) > record.timestamp:
            out.append((subset, fp, "modified after the last materialization"))
    return out


SCHEDULE_STATUS, SENSOR_STATUS = _default_status()


@dg.schedule(name="refresh_changed_train_subsets", job=ingest_train_job, cron_schedule="0 2 * * *",
             default_status=SCHEDULE_STATUS,
             description="Nightly: re-read every MMEB-train subset whose source files are new or changed; "
             "declarative automation then rebuilds candidate_index and re-mines.")  # fmt: skip
def refresh_changed_train_subsets(context: dg.ScheduleEvaluationContext, settings: SettingsResource):
    s = settings.get()
    subsets = [k for k in TRAIN_SUBSETS if k in set(s.train_subset_names)]
    changed = changed_train_partitions(context.instance, s.train_root, subsets, s.train_split)
    if not changed:
        return dg.SkipReason(f"no new or changed train subsets under {s.train_root} ({len(subsets)} checked)")
    return [
        dg.RunRequest(
            partition_key=subset,
            run_key=f"{subset}:{fp}",
            tags={FINGERPRINT_TAG: fp, "unime/refresh_reason": reason},
        )  # fmt: skip
        for subset, fp, reason in changed
    ]


# --- new embedder versions: sensor ---------------------------------------------------------------


def _evaluation_request(
    context: dg.SensorEvaluationContext, tags: dict[str, str], run_key: str
) -> dg.RunRequest:
    """One run of the `evaluate` job; if evaluation assets are partitioned (per eval subset), one backfill
    of all their partitions and the unpartitioned report instead, so the report runs after the parts."""
    repo = context.repository_def
    if repo is not None:
        graph = repo.asset_graph
        keys = EVALUATION_SELECTION.resolve(graph)
        if any(graph.get(k).partitions_def is not None for k in keys):
            from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
            from dagster._core.definitions.events import AssetKeyPartitionKey

            parts = {
                AssetKeyPartitionKey(k, p)
                for k in keys
                for p in (
                    graph.get(k).partitions_def.get_partition_keys()
                    if graph.get(k).partitions_def
                    else [None]
                )
            }
            subset = AssetGraphSubset.from_asset_partition_set(parts, graph)
            return dg.RunRequest.for_asset_graph_subset(subset, tags=tags)
    return dg.RunRequest(run_key=run_key, job_name=evaluate_job.name, tags=tags)


@dg.sensor(name="evaluate_new_embedder", job=evaluate_job, minimum_interval_seconds=300,
           default_status=SENSOR_STATUS,
           description=f"Polls the MLflow registry for new {EMBEDDER_MODEL} versions and evaluates each one; "
           "the cursor is the highest version seen. First tick: only the latest version.")  # fmt: skip
def evaluate_new_embedder(context: dg.SensorEvaluationContext, mlflow: MlflowResource):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=mlflow.uri(), registry_uri=mlflow.uri())
    try:
        versions = client.search_model_versions(f"name='{EMBEDDER_MODEL}'")
    except MlflowException as exc:
        return dg.SkipReason(f"MLflow registry at {mlflow.uri()} not readable: {exc}")
    by_number = {int(v.version): v for v in versions}
    if not by_number:
        return dg.SkipReason(f"no version of {EMBEDDER_MODEL} registered yet")
    seen = int(context.cursor) if context.cursor else None
    new = sorted(n for n in by_number if seen is None or n > seen)
    # A version without lineage comes from an interrupted registration: never evaluated (the cursor
    # still moves past it; the retried registration creates a complete version).
    incomplete = [n for n in new if not is_complete(by_number[n].tags)]
    complete = [n for n in new if n not in incomplete]
    if seen is None:
        complete = complete[-1:]  # first tick: evaluate the current state, not the whole history
    if not complete:
        if new:
            return dg.SensorResult(skip_reason=f"{EMBEDDER_MODEL} version(s) {incomplete} have no lineage tags "
                                   "(interrupted registrations): not evaluated", cursor=str(max(new)))  # fmt: skip
        return dg.SkipReason(f"no {EMBEDDER_MODEL} version newer than {seen}")
    if incomplete:
        context.log.warning(f"skipping {EMBEDDER_MODEL} version(s) {incomplete}: no lineage tags")
    requests = []
    for n in complete:
        mv = by_number[n]
        tags = {VERSION_TAG: str(n), MODEL_URI_TAG: f"models:/{EMBEDDER_MODEL}/{n}",
                "unime/embedder_mlflow_run_id": mv.run_id or "",
                "unime/embedder_dagster_run_id": (mv.tags or {}).get("dagster.run_id", "")}  # fmt: skip
        requests.append(_evaluation_request(context, tags, run_key=f"{EMBEDDER_MODEL}/{n}"))
    return dg.SensorResult(run_requests=requests, cursor=str(max(new)))


# --- declarative automation of the mining chain ------------------------------------------------


def index_refresh_condition() -> dg.AutomationCondition:
    """candidate_index: rebuild once any upstream (an mmeb_train partition, the retriever) updated and
    none is still running. Unlike `eager()` it does not wait for every train partition to exist: a
    profile often materializes a few subsets only."""
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("refresh after any upstream update")


def mining_condition() -> dg.AutomationCondition:
    """candidate_pool / judge_scores/* / judge_ensemble / mined_negatives: `eager()` (run a partition when an upstream
    updates, never one whose upstream is missing or in progress), except that a new `mmeb_train`
    partition is not a trigger by itself: it first rebuilds candidate_index (whose cand_ids it
    renumbers), and that rebuild triggers every partition. So no partition is mined against an index
    about to be replaced, and a new subset is mined once the index holds its positives."""
    return (
        dg.AutomationCondition.eager()
        .replace("any_deps_updated",
                 dg.AutomationCondition.any_deps_updated().ignore(dg.AssetSelection.assets("mmeb_train")))
        .with_label("eager, after candidate_index")
    )  # fmt: skip


# By the first part of the asset key: `judge_scores` covers every `judge_scores/<name>`.
AUTOMATION_CONDITIONS = {
    "candidate_index": index_refresh_condition,
    "candidate_pool": mining_condition,
    "judge_scores": mining_condition,
    "judge_ensemble": mining_condition,
    "mined_negatives": mining_condition,
}

mining_automation = dg.AutomationConditionSensorDefinition(
    "mining_automation", target=AUTOMATED_SELECTION, run_tags=_run_tags("mine", 24),
    minimum_interval_seconds=60, default_status=SENSOR_STATUS,
    description="Evaluates the automation conditions of candidate_index and the mining chain.",
)  # fmt: skip


def with_automation(defs: dg.Definitions) -> dg.Definitions:
    """The code location's definitions plus automation conditions, jobs, the schedule and the sensors."""

    def add_condition(spec: dg.AssetSpec) -> dg.AssetSpec:
        make = AUTOMATION_CONDITIONS.get(spec.key.path[0])
        return spec.replace_attributes(automation_condition=make()) if make else spec

    with warnings.catch_warnings():  # map_asset_specs is marked preview in 1.13; pinned version, tested here
        warnings.simplefilter("ignore", dg.PreviewWarning)
        automated = defs.map_asset_specs(func=add_condition)
    return dg.Definitions.merge(
        automated,
        dg.Definitions(
            jobs=JOBS,
            schedules=[refresh_changed_train_subsets],
            sensors=[evaluate_new_embedder, mining_automation],
        ),  # fmt: skip
    )
