"""`unime-assets`: build the embedded default and summarise what a materialization produced."""

from __future__ import annotations

import argparse
import os
import sys
import time

ASSETS = [
    "mmeb_train", "mmeb_eval", "retriever_model", "judge_model", "candidate_pool", "judge_scores",
    "mined_negatives", "embedder_checkpoint", "reranker_checkpoint", "mmeb_report",
]  # fmt: skip
SHOWN = {
    "mmeb_train": ["rows"],
    "mmeb_eval": ["rows"],
    "retriever_model": ["final_loss", "path"],
    "judge_model": ["held_out_auc", "path"],
    "candidate_pool": ["pool_size", "mean_candidates"],
    "judge_scores": ["pairs", "auc_pos_vs_candidates", "false_negative_rate"],
    "mined_negatives": ["fallback_fraction", "mean_survivors"],
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


def summary(args: argparse.Namespace) -> int:
    import dagster as dg
    from mlflow import MlflowClient

    from unime_assets.defs.resources import MlflowResource

    instance = dg.DagsterInstance.get()
    missing = []
    print("\nAssets in the Dagster instance at", os.environ.get("DAGSTER_HOME"))
    for name in ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        if event is None:
            missing.append(name)
            print(f"  {name:22s} NOT MATERIALIZED")
            continue
        meta = event.asset_materialization.metadata
        shown = []
        for key in SHOWN[name]:
            if key in meta:
                value = meta[key].value
                shown.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        print(f"  {name:22s} run {event.run_id[:8]}  " + "  ".join(shown))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unime-assets", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-default", help="write synthetic MMEB data, tiny checkpoints and settings.yaml")
    b.add_argument("--size", default="demo", choices=["demo", "test"])
    b.add_argument("--home", default=None, help="default: $UNIME_HOME/embedded")
    b.set_defaults(func=build_default)
    s = sub.add_parser("summary", help="print the latest materialization of every asset and the MLflow state")
    s.set_defaults(func=summary)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
