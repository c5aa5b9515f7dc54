"""`unime-assets`: build the embedded default and summarise what a materialization produced."""

from __future__ import annotations

import argparse
import os
import sys
import time

# Asset names; `judge_model` and `judge_scores` stand for one asset per judge (`judge_scores/<name>`).
ASSETS = [
    "mmeb_train", "mmeb_eval", "pretrained_base", "retriever_model", "judge_model", "candidate_index", "candidate_pool",
    "judge_scores", "judge_ensemble", "mined_negatives", "training_set", "embedder_checkpoint",
    "reranker_checkpoint", "mmeb_report",
]  # fmt: skip
# The graph in dependency order: (partitions, assets); partitioned stages run once per partition.
STAGES: list[tuple[str | None, list[str]]] = [
    ("train", ["mmeb_train"]),
    ("eval", ["mmeb_eval"]),
    (None, ["pretrained_base", "retriever_model", "judge_model", "candidate_index"]),
    ("train", ["candidate_pool", "judge_scores", "judge_ensemble", "mined_negatives"]),
    (None, ["training_set", "embedder_checkpoint", "reranker_checkpoint", "mmeb_report"]),
]
SHOWN = {
    "mmeb_train": ["rows"],
    "mmeb_eval": ["rows"],
    "pretrained_base": ["final_loss", "path"],
    "retriever_model": ["final_loss", "path"],
    "judge_model": ["held_out_auc", "path"],
    "candidate_index": ["pool_size", "encoded", "cached"],
    "candidate_pool": ["queries", "mean_candidates"],
    "judge_scores": ["pairs", "auc_pos_vs_candidates", "false_negative_rate"],
    "judge_ensemble": ["judges", "rule", "fn_filter_disagreement", "spearman"],
    "mined_negatives": ["judge", "fallback_fraction", "mean_survivors"],
    "training_set": ["queries", "source"],
    "embedder_checkpoint": ["first_loss", "final_loss", "model_uri"],
    "reranker_checkpoint": ["first_loss", "final_loss", "model_uri"],
    "mmeb_report": ["overall", "rerank_unparsable"],
}


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
    """The whole graph (or chosen assets/partitions) on the instance at $DAGSTER_HOME: one run per
    partition of each partitioned stage, then the unpartitioned stages, like a backfill would."""
    import dagster as dg

    from unime_assets.definitions import defs
    from unime_assets.defs.partitions import EVAL_SUBSETS, TRAIN_SUBSETS

    parts = {"train": _partition_list(args.train, TRAIN_SUBSETS, "train"),
             "eval": _partition_list(args.eval, EVAL_SUBSETS, "eval")}  # fmt: skip
    wanted = set(args.assets.split(",")) if args.assets else set(ASSETS)
    if unknown := wanted - set(ASSETS):
        raise SystemExit(f"unknown asset(s) {sorted(unknown)}; expected some of {ASSETS}")
    everything = [*defs.assets, *defs.asset_checks]
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    instance = dg.DagsterInstance.get()
    t0 = time.time()
    for kind, names in STAGES:
        names = [n for n in names if n in wanted]
        if not names:
            continue
        for key in parts[kind] if kind else [None]:
            label = ",".join(names) + (f" [{key}]" if key else "")
            print(f"[{time.time() - t0:6.0f}s] materializing {label}", flush=True)
            result = dg.materialize(everything, selection=_keys_named(keys, names), partition_key=key,
                                    instance=instance, resources=defs.resources, raise_on_error=False)  # fmt: skip
            if not result.success:
                print(f"FAILED: {label} (run {result.run_id}); see the Dagster UI or the log above", file=sys.stderr)
                return 1
    print(f"materialized in {time.time() - t0:.0f}s")
    return 0


def _keys_named(keys, names: list[str]) -> list:
    """The asset keys of `names`: `judge_scores` is every `judge_scores/<judge>`."""
    return sorted((k for k in keys if k.path[0] in names), key=lambda k: (names.index(k.path[0]), k.path))


def summary(args: argparse.Namespace) -> int:
    import dagster as dg
    from mlflow import MlflowClient

    from unime_assets.definitions import defs
    from unime_assets.defs.resources import MlflowResource

    instance = dg.DagsterInstance.get()
    missing = []
    print("\nAssets in the Dagster instance at", os.environ.get("DAGSTER_HOME"))
    for key in _keys_named(defs.resolve_asset_graph().get_all_asset_keys(), ASSETS):
        name, label = key.path[0], key.to_user_string()
        event = instance.get_latest_materialization_event(key)
        if event is None:
            missing.append(label)
            print(f"  {label:22s} NOT MATERIALIZED")
            continue
        meta = event.asset_materialization.metadata
        parts = instance.get_materialized_partitions(key)
        if parts:
            meta = {**meta, "partitions": dg.MetadataValue.int(len(parts))}
        shown = []
        for key in ["partitions", *SHOWN[name]]:
            if key in meta:
                value = meta[key].value
                shown.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        print(f"  {label:22s} run {event.run_id[:8]}  " + "  ".join(shown))
    uri = MlflowResource().uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("unime-v2")
    n_runs = len(client.search_runs([exp.experiment_id], max_results=10_000)) if exp else 0
    print(f"\nMLflow ({uri}): {n_runs} runs in experiment 'unime-v2'")
    for model in ("unime-v2-embedder", "unime-v2-reranker"):
        versions = client.search_model_versions(f"name='{model}'")
        latest = max((int(v.version) for v in versions), default=None)
        print(f"  registered model {model}: {len(versions)} version(s), latest {latest}")
    print("\nLook at it: `make ui`, then Dagster http://127.0.0.1:3000 (Assets -> Global asset lineage)"
          " and MLflow http://127.0.0.1:5000 (experiment unime-v2, Models).")  # fmt: skip
    return 1 if missing else 0


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


def _latest_report_path() -> str | None:
    import dagster as dg

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("ablation_report"))
    meta = event.asset_materialization.metadata if event is not None and event.asset_materialization else {}
    return str(meta["ablation_json"].value) if "ablation_json" in meta else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unime-assets", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-default", help="write synthetic MMEB data, tiny checkpoints and settings.yaml")
    b.add_argument("--size", default="demo", choices=["demo", "test", "ablation"],
                   help="ablation: the demo plus a second tiny judge of another family (InternVL3)")
    b.add_argument("--home", default=None, help="default: $UNIME_HOME/embedded")
    b.set_defaults(func=build_default)
    m = sub.add_parser("materialize", help="materialize the asset graph on the Dagster instance at $DAGSTER_HOME")
    m.add_argument("--train", help="comma-separated train partitions (default: all)")
    m.add_argument("--eval", help="comma-separated eval partitions (default: all)")
    m.add_argument("--assets", help=f"comma-separated subset of {ASSETS} (default: all, in dependency order)")
    m.set_defaults(func=materialize)
    s = sub.add_parser("summary", help="print the latest materialization of every asset and the MLflow state")
    s.set_defaults(func=summary)
    r = sub.add_parser("recover", help="after crashes: fail dead runs and free their gpu slots, close their MLflow "
                       "runs, delete orphan temp files, stale judge shards and old cache namespaces")
    r.add_argument("--dry-run", action="store_true", help="list what would be done, change nothing")
    r.set_defaults(func=recover)
    a = sub.add_parser("ablate", help="the ablation job: every (variant, seed) run of the profile and ablation_report; "
                       "prints `ablation report: <path to ablation.json>` last")
    a.add_argument("--workers", type=int, default=2, help="processes running Dagster runs in parallel (default 2: "
                   "one torch thread each on a 2-core machine)")
    a.add_argument("--variants", help="comma-separated variants (default: every variant of the profile)")
    a.add_argument("--seeds", help="comma-separated seeds (default: the profile's ablation.seeds)")
    a.add_argument("--skip-upstream", action="store_true", help="only the runs and the report (the data, models, "
                   "candidate pools and judge scores are materialized already)")
    a.set_defaults(func=ablate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
