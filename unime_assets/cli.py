"""`unime-assets`: set up the project's environment, build the embedded default, materialize the asset
graph through the code location's named jobs, and summarise what a materialization produced.

Run from the project root: the Dagster instance and the artifact root come from the environment, else
from the project's `.env` (written by `make install`, see project_env.py)."""

from __future__ import annotations

import argparse
import sys
import time

from unime_assets.project_env import init_project, instance_problem, load_env_file
from unime_assets.quiet import install as quiet_logs

# Asset names; `judge_model` and `judge_scores` stand for one asset per judge (`judge_scores/<name>`).
ASSETS = [
    "mmeb_train", "mmeb_eval", "retriever_model", "judge_model", "candidate_index", "candidate_pool",
    "judge_scores", "judge_ensemble", "mined_negatives", "training_set", "embedder_checkpoint",
    "reranker_checkpoint", "mmeb_report",
]  # fmt: skip
# The graph in dependency order, one named job per stage (defs/automation.py): (partitions, job, assets);
# partitioned stages run once per partition.
STAGES: list[tuple[str | None, str, list[str]]] = [
    ("train", "ingest_train", ["mmeb_train"]),
    ("eval", "ingest_eval", ["mmeb_eval"]),
    (None, "models", ["retriever_model", "judge_model"]),
    (None, "index", ["candidate_index"]),
    ("train", "mine", ["candidate_pool", "judge_scores", "judge_ensemble", "mined_negatives"]),
    (None, "train", ["training_set", "embedder_checkpoint", "reranker_checkpoint"]),
    (None, "evaluate", ["mmeb_report"]),
]
# Dagster's per-event DEBUG lines (step start, output handled, ...) stay in the instance's event log.
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


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
    names = [v.strip() for v in value.split(",") if v.strip()]
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
            typical = typical_run_seconds(instance, job_name)
            expect = f"ETA {duration(typical * len(keys))} from earlier runs" if typical else "no earlier run to time"
            print(f"[{duration(time.time() - t0):>6}] stage {i}/{len(plan)} {job_name}: {', '.join(names)}"
                  + (f" x {len(keys)} {kind} partitions" if kind else "") + f"; {expect}", flush=True)  # fmt: skip
            stage_t0 = time.time()
            for done, key in enumerate(keys, 1):
                tags = {"unime/assets": ",".join(names), "unime/launched_by": "unime-assets materialize"}
                result = job.execute_in_process(
                    instance=instance, partition_key=key, asset_selection=_keys_named(all_keys, names),
                    tags=tags, run_config=RUN_CONFIG, raise_on_error=False,
                )  # fmt: skip
                label = f"{job_name}" + (f"[{key}]" if key else "")
                if not result.success:
                    print(f"FAILED: {label} (run {result.run_id}); its log is above and in the Dagster UI",
                          file=sys.stderr)  # fmt: skip
                    return 1
                if kind:
                    per_run = (time.time() - stage_t0) / done
                    print(f"[{duration(time.time() - t0):>6}] stage {i}/{len(plan)} {job_name}: {done}/{len(keys)} "
                          f"partitions ({key} done), ETA {duration(per_run * (len(keys) - done))}", flush=True)  # fmt: skip
            print(f"[{duration(time.time() - t0):>6}] stage {i}/{len(plan)} {job_name} done in "
                  f"{duration(time.time() - stage_t0)}", flush=True)  # fmt: skip
    print(f"materialized in {duration(time.time() - t0)}")
    return 0


def _keys_named(keys, names: list[str]) -> list:
    """The asset keys of `names`: `judge_scores` is every `judge_scores/<judge>`."""
    return sorted((k for k in keys if k.path[0] in names), key=lambda k: (names.index(k.path[0]), k.path))


def summary(args: argparse.Namespace) -> int:
    from unime_assets.defs.summary import print_summary

    return print_summary(ASSETS)


def recover(args: argparse.Namespace) -> int:
    from unime_assets.defs.recovery import recover as run_recovery

    print("\n".join(run_recovery(dry_run=args.dry_run)))
    return 0


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
    m.set_defaults(func=materialize, needs_instance=True)
    s = sub.add_parser("summary", help="timing per stage, judge and mining quality over all partitions, the MMEB "
                       "report and the registered versions")  # fmt: skip
    s.set_defaults(func=summary, needs_instance=True)
    r = sub.add_parser("recover", help="after crashes: fail dead runs and free their gpu slots, close their MLflow "
                       "runs, delete orphan temp files, stale judge shards and old cache namespaces")
    r.add_argument("--dry-run", action="store_true", help="list what would be done, change nothing")
    r.set_defaults(func=recover, needs_instance=True)
    args = parser.parse_args(argv)
    load_env_file()
    quiet_logs()
    if args.needs_instance and (problem := instance_problem()):
        print(f"unime-assets: {problem}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
