"""The code location loads and exposes the asset-key contract, its dependencies and checks."""

from __future__ import annotations

import dagster as dg

from unime_assets.definitions import defs

CONTRACT = {
    "mmeb_train": set(),
    "mmeb_eval": set(),
    "retriever_model": {"mmeb_train"},
    "judge_model": {"mmeb_train", "mmeb_eval"},
    "candidate_pool": {"mmeb_train", "retriever_model"},
    "judge_scores": {"mmeb_train", "candidate_pool", "judge_model"},
    "mined_negatives": {"judge_scores", "candidate_pool"},
    "embedder_checkpoint": {"mmeb_train", "judge_scores", "mined_negatives", "candidate_pool"},
    "reranker_checkpoint": {"mmeb_train", "mined_negatives", "candidate_pool", "judge_model"},
    "mmeb_report": {"mmeb_eval", "retriever_model", "embedder_checkpoint", "reranker_checkpoint"},
}


def test_asset_keys_and_lineage():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(CONTRACT)
    for name, parents in CONTRACT.items():
        node = graph.get(dg.AssetKey(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents, name
    groups = {graph.get(dg.AssetKey(n)).group_name for n in CONTRACT}
    assert groups == {"data", "models", "mining", "training", "evaluation"}


def test_checks_and_resources():
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys}
    assert {"delta_rule_holds", "judge_scores_valid", "mined_negatives_valid", "eval_rows_well_formed"} <= checks
    assert {"settings", "mlflow", "io_manager"} <= set(defs.resources)
