"""The code location loads and exposes the asset-key contract, its dependencies and checks."""

from __future__ import annotations

import dagster as dg

from unime_assets.definitions import defs

CONTRACT = {
    "mmeb_train": set(),
    "mmeb_eval": set(),
    "retriever_model": {"mmeb_train"},
    # one judge_model/<name> and judge_scores/<name> per judge; the embedded default has one judge
    "judge_model/qwen25vl": {"mmeb_train", "mmeb_eval"},
    "candidate_index": {"mmeb_train", "retriever_model"},
    "candidate_pool": {"mmeb_train", "candidate_index"},
    "judge_scores/qwen25vl": {"mmeb_train", "candidate_pool", "candidate_index", "judge_model/qwen25vl"},
    "judge_ensemble": {"candidate_pool", "judge_scores/qwen25vl"},
    "mined_negatives": {"judge_scores/qwen25vl", "judge_ensemble", "candidate_pool", "candidate_index"},
    "training_set": {"mmeb_train", "mined_negatives", "candidate_index"},
    "embedder_checkpoint": {"training_set"},
    "reranker_checkpoint": {"training_set", "judge_model/qwen25vl"},
    "mmeb_report": {"mmeb_eval", "retriever_model", "embedder_checkpoint", "reranker_checkpoint"},
}


def test_asset_keys_and_lineage():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(CONTRACT)
    for name, parents in CONTRACT.items():
        node = graph.get(dg.AssetKey.from_user_string(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents, name
    groups = {graph.get(dg.AssetKey.from_user_string(n)).group_name for n in CONTRACT}
    assert groups == {"data", "models", "mining", "training", "evaluation"}


PARTITIONED = {"mmeb_train": "train", "candidate_pool": "train", "judge_scores/qwen25vl": "train",
               "judge_ensemble": "train", "mined_negatives": "train", "mmeb_eval": "eval"}  # fmt: skip


def test_partitions_follow_the_catalog():
    from unime_assets.data.catalog import get_catalog

    train, evals = get_catalog("synthetic")
    graph = defs.resolve_asset_graph()
    for name in CONTRACT:
        pdef = graph.get(dg.AssetKey.from_user_string(name)).partitions_def
        if name not in PARTITIONED:
            assert pdef is None, name
            continue
        assert pdef.get_partition_keys() == list(train if PARTITIONED[name] == "train" else evals), name


def test_checks_and_resources():
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys}
    assert {"delta_rule_holds", "judge_scores_valid", "judge_ensemble_valid", "mined_negatives_valid",
            "eval_rows_well_formed"} <= checks  # fmt: skip
    assert {"settings", "mlflow", "io_manager"} <= set(defs.resources)
