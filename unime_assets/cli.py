"""`unime-assets`: set up the project's environment, build the embedded default, materialize the asset
graph through the code location's named jobs, and summarise what a materialization produced.

Run from the project root: the Dagster instance and the artifact root come from the environment, else
from the project's `.env` (written by `make install`, see project_env.py)."""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Callable

from unime_assets.project_env import init_project, instance_problem, load_env_file
from unime_assets.quiet import install as quiet_logs

# Asset names; `judge_model` and `judge_scores` stand for one asset per judge (`judge_scores/<name>`).
ASSETS = [
    "mmeb_train", "mmeb_eval", "pretrained_base", "retriever_model", "judge_model", "candidate_index", "candidate_pool",
    "judge_scores", "judge_ensemble", "mined_negatives", "training_set", "embedder_checkpoint",
    "reranker_checkpoint", "mmeb_report",
]  # fmt: skip
# The graph in dependency order, one named job per stage (defs/automation.py): (partitions, job, assets);
# partitioned stages run once per partition.
STAGES: list[tuple[str | None, str, list[str]]] = [
    ("train", "ingest_train", ["mmeb_train"]),
    ("eval", "ingest_eval", ["mmeb_eval"]),
    (None, "models", ["pretrained_base", "retriever_model", "judge_model"]),
    (None, "index", ["candidate_index"]),
    ("train", "mine", ["candidate_pool", "judge_scores", "judge_ensemble", "mined_negatives"]),
    (None, "train", ["training_set", "embedder_checkpoint", "reranker_checkpoint"]),
    (None, "evaluate", ["mmeb_report"]),
]
# Dagster's per-event DEBUG lines (step start, output handled, ...) stay in the instance's event log.
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# Stages whose steps form independent chains run them with the job's own executor (the models job's is
# multiprocess: defs/automation.py), as a run launched from the UI does: the judge bootstraps while the
# pretrained base and the retriever train (one torch thread each). Other stages are one chain, or share
# the one-slot `gpu` pool, and run in this process (no step subprocess to start).
PARALLEL_STAGES = {"models"}
# Partitioned stages whose runs go side by side in `--workers` processes (this one and spawned workers, each
# taking the next partition when free), like a backfill's runs: the mining chain of a subset runs on one
# torch thread, so a second process uses the second core. Not the ingest stages: a spawned worker imports the
# code location (~10 CPU-s) to save ~1 s per partition.
WORKER_STAGES = {"mine"}


def stage_job(job_name: str):
    """The stage's job, rebuilt in each step process of the multiprocess executor."""
    from unime_assets.definitions import defs

    return defs.resolve_job_def(job_name)


def init(args: argparse.Namespace) -> int:
    env = init_project(args.root, args.settings)
    print(f"wrote {env}: the Dagster CLI and unime-assets run from {env.parent} without exported variables")
    return 0


def build_default(args: argparse.Namespace) -> int:
    from unime_assets.config import unime_home
    from unime_assets.embedded import build_embedded_default

    home = args.home or str(unime_home() / "embedded")
    t0 = time.time()
    path = build_embedded_default(home, args.size)
    print(f"embedded default ({args.size}) ready in {time.time() - t0:.1f}s: {path}")
    return 0


def _partition_list(value: str | None, known: list[str], kind: str) -> list[str]:
    if not value:
        return list(known)
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))  # a repeat runs once
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {kind} partition(s) {unknown}; the code location has {known}")
    return names


def materialize(args: argparse.Namespace) -> int:
    """The whole graph (or chosen assets/partitions) on the instance at $DAGSTER_HOME: each stage's job once
    per partition of a partitioned stage, then the unpartitioned stages, like a backfill would."""
    import dagster as dg

    from unime_assets.definitions import defs
    from unime_assets.defs.partitions import EVAL_SUBSETS, TRAIN_SUBSETS
    from unime_assets.defs.summary import duration, typical_run_seconds

    parts = {"train": _partition_list(args.train, TRAIN_SUBSETS, "train"),
             "eval": _partition_list(args.eval, EVAL_SUBSETS, "eval")}  # fmt: skip
    wanted = set(args.assets.split(",")) if args.assets else set(ASSETS)
    if unknown := wanted - set(ASSETS):
        raise SystemExit(f"unknown asset(s) {sorted(unknown)}; expected some of {ASSETS}")
    plan = [(kind, job, [n for n in names if n in wanted]) for kind, job, names in STAGES]
    plan = [(kind, job, names) for kind, job, names in plan if names]
    all_keys = defs.resolve_asset_graph().get_all_asset_keys()
    t0 = time.time()
    with dg.DagsterInstance.get() as instance:
        for i, (kind, job_name, names) in enumerate(plan, 1):
            keys = parts[kind] if kind else [None]
            job = defs.resolve_job_def(job_name)
            side_by_side = max(1, min(args.workers, len(keys))) if kind and job_name in WORKER_STAGES else 1
            typical = typical_run_seconds(instance, job_name)
            rounds = math.ceil(len(keys) / side_by_side)  # runs one after the other in the stage
            expect = f"ETA {duration(typical * rounds)} from earlier runs" if typical else "no earlier run to time"
            print(f"[{duration(time.time() - t0):>6}] stage {i}/{len(plan)} {job_name}: {', '.join(names)}"
                  + (f" x {len(keys)} {kind} partitions" if kind else "")
                  + (f" in {side_by_side} processes" if side_by_side > 1 else "") + f"; {expect}", flush=True)  # fmt: skip
            stage_t0 = time.time()
            tags = {"unime/assets": ",".join(names), "unime/launched_by": "unime-assets materialize"}
            selection = _keys_named(all_keys, names)
            report = _StageProgress(f"stage {i}/{len(plan)} {job_name}", job_name, len(keys) if kind else 0, t0)
            if side_by_side > 1:
                _create_stores()  # before a second process can create them (see the function)
                ok = _partitions_side_by_side(
                    keys, side_by_side, functools.partial(_run_partition, job, selection, tags=tags, instance=instance),
                    functools.partial(_worker_run_partition, job_name, selection, tags), report)  # fmt: skip
            else:
                ok = True
                for key in keys:
                    if key is None and job_name in PARALLEL_STAGES:
                        recon = dg.build_reconstructable_job("unime_assets.cli", "stage_job", (job_name,))
                        with dg.execute_job(recon, instance, run_config=RUN_CONFIG, tags=tags,
                                            asset_selection=selection) as result:  # fmt: skip
                            ok, run_id = result.success, result.run_id
                    else:
                        ok, run_id = _run_partition(job, selection, key, tags=tags, instance=instance)
                    report(key, ok, run_id)
                    if not ok:
                        break
            if not ok:
                return 1
            print(f"[{duration(time.time() - t0):>6}] stage {i}/{len(plan)} {job_name} done in "
                  f"{duration(time.time() - stage_t0)}", flush=True)  # fmt: skip
    print(f"materialized in {duration(time.time() - t0)}")
    # In this process: a separate `unime-assets summary` would import torch, transformers and Dagster again (~10 s).
    return summary(args) if args.summary else 0


def _keys_named(keys, names: list[str]) -> list:
    """The asset keys of `names`: `judge_scores` is every `judge_scores/<judge>`."""
    return sorted((k for k in keys if k.path[0] in names), key=lambda k: (names.index(k.path[0]), k.path))


class _StageProgress:
    """Prints a failed run, and each finished partition with the stage's ETA; called after every run."""

    def __init__(self, label: str, job_name: str, n_partitions: int, t0: float) -> None:
        self.label, self.job_name, self.n, self.t0 = label, job_name, n_partitions, t0
        self.stage_t0, self.finished = time.time(), 0

    def __call__(self, key: str | None, ok: bool, run_id: str) -> None:
        from unime_assets.defs.summary import duration

        if not ok:
            run = self.job_name + (f"[{key}]" if key else "")
            print(f"FAILED: {run} (run {run_id}); its log is above and in the Dagster UI", file=sys.stderr)
        elif self.n:
            self.finished += 1
            eta = (time.time() - self.stage_t0) / self.finished * (self.n - self.finished)
            print(f"[{duration(time.time() - self.t0):>6}] {self.label}: {self.finished}/{self.n} partitions "
                  f"({key} done), ETA {duration(eta)}", flush=True)  # fmt: skip


def _run_partition(job, selection: list, key: str | None, *, tags: dict[str, str], instance) -> tuple[bool, str]:
    result = job.execute_in_process(instance=instance, partition_key=key, asset_selection=selection, tags=tags,
                                    run_config=RUN_CONFIG, raise_on_error=False)  # fmt: skip
    return result.success, result.run_id


def _worker_run_partition(job_name: str, selection: list, tags: dict[str, str], key: str) -> tuple[bool, str]:
    """One partition's run of a stage in a spawned worker (imports the code location once per worker)."""
    import dagster as dg

    from unime_assets.definitions import defs

    with dg.DagsterInstance.get() as instance:
        return _run_partition(defs.resolve_job_def(job_name), selection, key, tags=tags, instance=instance)


def _partitions_side_by_side(keys: list[str], processes: int, run_here: Callable[[str], tuple[bool, str]],
                             run_in_worker: Callable[[str], tuple[bool, str]], report) -> bool:  # fmt: skip
    """Partition runs in this process (`run_here`) and in `processes - 1` spawned workers (`run_in_worker`,
    picklable), each taking the next partition when free; `report(key, ok, run_id)` after each. After a
    failure no new partition starts; the runs under way finish. True when every run succeeded."""
    import concurrent.futures
    import multiprocessing
    import threading
    import traceback

    todo, lock, failed = list(keys), threading.Lock(), []

    def take() -> str | None:
        with lock:
            return None if failed or not todo else todo.pop(0)

    def done(key: str, ok: bool, run_id: str) -> None:
        with lock:
            if not ok:
                failed.append(key)
            report(key, ok, run_id)

    def feed(pool: concurrent.futures.Executor) -> None:  # a thread that keeps one worker busy
        while (key := take()) is not None:
            try:
                ok, run_id = pool.submit(run_in_worker, key).result()
            except BaseException as exc:  # a worker that died or was interrupted: a failed run
                traceback.print_exception(exc)
                ok, run_id = False, f"worker error: {exc!r}; `unime-assets recover` closes a run it left open"
            done(key, ok, run_id)

    ctx = multiprocessing.get_context("spawn")  # fresh workers: no torch / Dagster state forked
    with concurrent.futures.ProcessPoolExecutor(max_workers=processes - 1, mp_context=ctx) as pool:
        # The workers start now, before this process's first run: a process started during a run would
        # inherit the output Dagster captures for that run.
        for started in [pool.submit(os.getpid) for _ in range(processes - 1)]:
            started.result()
        feeders = [threading.Thread(target=feed, args=(pool,), daemon=True) for _ in range(processes - 1)]
        for thread in feeders:
            thread.start()
        try:
            while (key := take()) is not None:
                done(key, *run_here(key))
        finally:  # also on an exception here (Ctrl-C): the workers start nothing new
            with lock:
                todo.clear()
            for thread in feeders:
                thread.join()
    return not failed


def summary(args: argparse.Namespace) -> int:
    from unime_assets.defs.summary import print_summary

    return print_summary(ASSETS)


def recover(args: argparse.Namespace) -> int:
    from unime_assets.defs.recovery import recover as run_recovery

    print("\n".join(run_recovery(dry_run=args.dry_run)))
    return 0


# --- the ablation ----------------------------------------------------------------------------------


def _materialize_task(names: list[str], partition: str | None, tags: dict[str, str]) -> tuple[bool, str]:
    """One Dagster run in this (worker) process: the assets `names` (a name covers every `name/<judge>`)."""
    import dagster as dg

    from unime_assets.definitions import defs

    keys = [k for k in defs.resolve_asset_graph().get_all_asset_keys()
            if k.path[0] in names or k.to_user_string() in names]  # fmt: skip
    result = dg.materialize([*defs.assets, *defs.asset_checks], selection=keys, partition_key=partition,
                            instance=dg.DagsterInstance.get(), resources=defs.resources, raise_on_error=False,
                            tags=tags)  # fmt: skip
    return result.success, result.run_id


def _ablation_plan(args: argparse.Namespace) -> tuple[list[list[tuple[list[str], str | None]]], list[str]]:
    """Phases of (assets, partition) tasks; the tasks of a phase are independent. The ablation's runs
    go longest first (the mined-negative variants cost ~(1 + k) times an in-batch run per step)."""
    from unime_assets.ablation import variant_settings
    from unime_assets.config import load_settings
    from unime_assets.defs.partitions import (
        ABLATION_SEEDS,
        ABLATION_VARIANTS,
        EVAL_SUBSETS,
        JUDGES,
        TRAIN_SUBSETS,
        ablation_key,
    )

    variants = _partition_list(args.variants, ABLATION_VARIANTS, "ablation variant")
    seeds = [int(x) for x in _partition_list(args.seeds, [str(x) for x in ABLATION_SEEDS], "ablation seed")]
    s = load_settings(os.environ.get("UNIME_SETTINGS") or _default_settings())

    def cost(v: str) -> int:
        e = variant_settings(s, v, 0).embedder
        return 1 if e.loss == "infonce_inbatch" else 1 + e.k_negatives

    runs = [(["ablation_run"], str(ablation_key(v, seed))) for v in sorted(variants, key=cost, reverse=True)
            for seed in seeds]  # fmt: skip
    upstream = [
        [(["mmeb_train"], p) for p in TRAIN_SUBSETS] + [(["mmeb_eval"], p) for p in EVAL_SUBSETS],
        [([f"judge_model/{j}"], None) for j in JUDGES] + [(["pretrained_base", "retriever_model", "candidate_index"], None)],
        [(["candidate_pool", "judge_scores", "judge_ensemble"], p) for p in TRAIN_SUBSETS],
    ]  # fmt: skip
    return ([] if args.skip_upstream else upstream) + [runs, [(["ablation_report"], None)]], variants


def _default_settings() -> str:
    from unime_assets.config import default_settings_file

    return str(default_settings_file())


def ablate(args: argparse.Namespace) -> int:
    """The ablation job on the instance at $DAGSTER_HOME: what the runs need (data, base, retriever, judges,
    candidate pools, judge scores), every (variant, seed) run with `--workers` processes, then
    `ablation_report`. Each run is its own Dagster run, tagged with this campaign (one MLflow parent)."""
    import concurrent.futures
    import multiprocessing
    import uuid

    from unime_assets.defs.assets.ablation import CAMPAIGN_TAG

    phases, _ = _ablation_plan(args)
    _create_stores()
    tags = {CAMPAIGN_TAG: f"ablation-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"}
    t0, failed, succeeded = time.time(), [], set()
    ctx = multiprocessing.get_context("spawn")  # fresh workers: no torch / Dagster state forked
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        for phase in phases:
            kind = phase[0][0][0]
            if failed and kind not in ("ablation_run", "ablation_report"):
                break  # an upstream step failed: the runs would fail too
            if kind == "ablation_report" and "ablation_run" not in succeeded:
                break  # no run succeeded: nothing to report
            jobs = {pool.submit(_materialize_task, names, part, tags): (names, part) for names, part in phase}
            for fut in concurrent.futures.as_completed(jobs):
                names, part = jobs[fut]
                label = ",".join(names) + (f" [{part}]" if part else "")
                try:
                    ok, run_id = fut.result()
                except Exception as exc:  # a worker that died: reported like a failed run
                    ok, run_id = False, f"worker error: {exc!r}"
                print(f"[{time.time() - t0:6.0f}s] {'done' if ok else 'FAILED'}: {label} (run {run_id})", flush=True)
                if ok:
                    succeeded.add(names[0])
                else:
                    failed.append(label)
    for label in failed:
        print(f"FAILED: {label}; see the Dagster UI or the log above", file=sys.stderr)
    print(f"ablation finished in {time.time() - t0:.0f}s with {args.workers} worker(s), {len(failed)} failed")
    report = _latest_report_path() if "ablation_report" in succeeded else None
    if report is None:
        return 1
    print(f"ablation report: {report}")
    return 1 if failed else 0


def _create_stores() -> None:
    """The Dagster instance's and MLflow's sqlite stores created here, once, before the workers start: two
    processes migrating a new store at once collide ("table _alembic_tmp_tags already exists")."""
    import dagster as dg

    from unime_assets.defs.resources import MlflowResource
    from unime_assets.tracking.mlflow_runs import ensure_experiment

    with dg.DagsterInstance.get():
        pass
    mlflow = MlflowResource()
    ensure_experiment(mlflow.uri(), mlflow.experiment_name, mlflow.artifact_location())


def _latest_report_path() -> str | None:
    import dagster as dg

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("ablation_report"))
    meta = event.asset_materialization.metadata if event is not None and event.asset_materialization else {}
    return str(meta["ablation_json"].value) if "ablation_json" in meta else None


def _at_least_one(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1 process")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unime-assets", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init", help="write the project's .env, the Dagster home and the MLflow folder (make install runs it)")
    i.add_argument("--root", default=".", help="the project root (default: the current directory)")
    i.add_argument("--settings", default=None, help="a settings profile (e.g. a real.yaml) every process started from "
                   "the root uses (UNIME_SETTINGS); default: the one recorded earlier, else the embedded default")  # fmt: skip
    i.set_defaults(func=init, needs_instance=False)
    b = sub.add_parser("build-default", help="write synthetic MMEB data, tiny checkpoints and settings.yaml")
    b.add_argument("--size", default="demo", choices=["demo", "test", "ablation"],
                   help="ablation: the demo plus a second tiny judge of another family (InternVL3)")
    b.add_argument("--home", default=None, help="default: $UNIME_HOME/embedded")
    b.set_defaults(func=build_default, needs_instance=False)
    m = sub.add_parser("materialize", help="materialize the asset graph on the Dagster instance at $DAGSTER_HOME")
    m.add_argument("--train", help="comma-separated train partitions (default: all)")
    m.add_argument("--eval", help="comma-separated eval partitions (default: all)")
    m.add_argument("--assets", help=f"comma-separated subset of {ASSETS} (default: all, in dependency order)")
    m.add_argument("--summary", action="store_true", help="then print what `unime-assets summary` prints (make demo)")
    m.add_argument("--workers", type=_at_least_one, default=2, help="processes running the mining stage's partitions side by "
                   "side (default 2: one torch thread each on a 2-core machine; 1: one after the other here)")
    m.set_defaults(func=materialize, needs_instance=True)
    s = sub.add_parser("summary", help="timing per stage, judge and mining quality over all partitions, the MMEB "
                       "report and the registered versions")  # fmt: skip
    s.set_defaults(func=summary, needs_instance=True)
    r = sub.add_parser("recover", help="after crashes: fail dead runs and free their gpu slots, close their MLflow "
                       "runs, delete orphan temp files, stale judge shards and old cache namespaces")
    r.add_argument("--dry-run", action="store_true", help="list what would be done, change nothing")
    r.set_defaults(func=recover, needs_instance=True)
    a = sub.add_parser("ablate", help="the ablation job: every (variant, seed) run of the profile and ablation_report; "
                       "prints `ablation report: <path to ablation.json>` last")
    a.add_argument("--workers", type=_at_least_one, default=2, help="processes running Dagster runs in parallel (default 2: "
                   "one torch thread each on a 2-core machine)")
    a.add_argument("--variants", help="comma-separated variants (default: every variant of the profile)")
    a.add_argument("--seeds", help="comma-separated seeds (default: the profile's ablation.seeds)")
    a.add_argument("--skip-upstream", action="store_true", help="only the runs and the report (the data, models, "
                   "candidate pools and judge scores are materialized already)")
    a.set_defaults(func=ablate, needs_instance=True)
    args = parser.parse_args(argv)
    load_env_file()
    quiet_logs()
    if args.needs_instance and (problem := instance_problem()):
        print(f"unime-assets: {problem}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
