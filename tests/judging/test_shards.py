"""Resumable judge scoring: shards survive a crash, are never recomputed, and are never reused when stale."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from safetensors.torch import load_file, save_file

from unime_assets import judging
from unime_assets.judging import PrefixSharedJudge, pool_scoring, score_candidate_pool
from unime_assets.judging import shards as js

N_QUERIES, SHARD_QUERIES = 9, 2  # 5 shards, the last one with a single query


class Boom(RuntimeError):
    pass


@pytest.fixture(scope="module")
def pool_inputs(settings):
    from unime_assets.data.mmeb import load_train

    train = load_train(settings.train_root, settings.train_subset_names).sample(n=N_QUERIES, seed=3)
    candidates = pl.DataFrame(
        {"cand_id": list(range(N_QUERIES)), "text": train["pos_text"], "image_path": train["pos_image_path"]}
    )
    rng = np.random.default_rng(0)
    cand_ids = [[int(c) for c in rng.choice(N_QUERIES, size=int(rng.integers(0, 5)), replace=False) if c != i]
                for i in range(N_QUERIES)]  # fmt: skip
    cand_ids[4] = []  # a query without candidates keeps an empty score list
    pool = pl.DataFrame(
        {"pair_id": train["pair_id"], "pos_cand_id": list(range(N_QUERIES)), "cand_ids": cand_ids},
        schema_overrides={"cand_ids": pl.List(pl.Int64)},
    )
    return train, candidates, pool


@pytest.fixture
def count_scored(monkeypatch):
    """Counts queries actually sent to the judge engine (not loaded from a shard)."""
    calls = {"queries": 0}
    original = PrefixSharedJudge.score_group

    def counting(self, query, cands):
        calls["queries"] += 1
        return original(self, query, cands)

    monkeypatch.setattr(PrefixSharedJudge, "score_group", counting)
    return calls


def run(pool_inputs, judge, image_root, shard_dir, on_shard=None):
    train, candidates, pool = pool_inputs
    return score_candidate_pool(train, candidates, pool, str(judge), str(image_root), batch_size=4,
                                shard_dir=shard_dir, shard_queries=SHARD_QUERIES, progress=False,
                                on_shard=on_shard)  # fmt: skip


def recorder():
    events: list[tuple[int, bool]] = []
    return events, lambda i, n, computed: events.append((i, computed))


def test_interrupted_run_resumes_without_recomputing_finished_shards(
    pool_inputs, tiny_qwen25vl, settings, tmp_path, count_scored
):
    root = settings.train_image_root
    reference = run(pool_inputs, tiny_qwen25vl, root, tmp_path / "uninterrupted")
    assert count_scored["queries"] == N_QUERIES
    assert reference.columns == ["pair_id", "pos_score", "cand_scores"]
    assert reference["cand_scores"].list.len().to_list() == pool_inputs[2]["cand_ids"].list.len().to_list()

    def crash_after_two(i, n, computed):
        if i == 1:
            raise Boom("killed")

    count_scored["queries"] = 0
    with pytest.raises(Boom):
        run(pool_inputs, tiny_qwen25vl, root, tmp_path / "resumed", on_shard=crash_after_two)
    assert count_scored["queries"] == 2 * SHARD_QUERIES
    assert len(list((tmp_path / "resumed").glob("*.parquet"))) == 2

    count_scored["queries"] = 0
    events, on_shard = recorder()
    resumed = run(pool_inputs, tiny_qwen25vl, root, tmp_path / "resumed", on_shard=on_shard)
    assert events == [(0, False), (1, False), (2, True), (3, True), (4, True)]
    assert count_scored["queries"] == N_QUERIES - 2 * SHARD_QUERIES  # only the unfinished shards' queries
    assert resumed.equals(reference)
    assert len(list((tmp_path / "resumed").glob("*.parquet"))) == 5

    # a third run loads everything and does not even need to score
    count_scored["queries"] = 0
    again = run(pool_inputs, tiny_qwen25vl, root, tmp_path / "resumed")
    assert count_scored["queries"] == 0 and again.equals(reference)
    meta = json.loads(next((tmp_path / "resumed").glob("*.json")).read_text())
    assert meta["prompt_version"] == judging.PROMPT_VERSION and meta["engine"].startswith("hf:")
    # without a shard dir (the old call) the result is the same
    assert run(pool_inputs, tiny_qwen25vl, root, None).equals(reference)


def test_changed_prompt_model_or_input_does_not_reuse_shards(
    pool_inputs, tiny_qwen25vl, settings, tmp_path, monkeypatch
):
    root, shards = settings.train_image_root, tmp_path / "shards"
    base = run(pool_inputs, tiny_qwen25vl, root, shards)

    monkeypatch.setattr(pool_scoring, "PROMPT_VERSION", "unime-v2-pairwise-test")
    events, on_shard = recorder()
    run(pool_inputs, tiny_qwen25vl, root, shards, on_shard=on_shard)
    assert all(computed for _, computed in events) and len(events) == 5
    monkeypatch.undo()

    # same architecture, same file sizes, one weight changed: a retrained judge
    judge2 = tmp_path / "judge2"
    shutil.copytree(tiny_qwen25vl, judge2)
    weights = next(judge2.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("lm_head.weight") or k.endswith("embed_tokens.weight"))
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights, metadata={"format": "pt"})
    events, on_shard = recorder()
    changed = run(pool_inputs, judge2, root, shards, on_shard=on_shard)
    assert all(computed for _, computed in events)
    assert not np.allclose(changed["pos_score"].to_numpy(), base["pos_score"].to_numpy())

    # one candidate's text changes: only the shards of queries that use it are recomputed
    train, candidates, pool = pool_inputs
    edited = candidates.with_columns(
        pl.when(pl.col("cand_id") == 0)
        .then(pl.lit("an edited caption"))
        .otherwise(pl.col("text"))
        .alias("text")
    )
    users = {i for i, (p, cs) in enumerate(zip(pool["pos_cand_id"], pool["cand_ids"], strict=True))
             if p == 0 or 0 in cs}  # fmt: skip
    events, on_shard = recorder()
    run((train, edited, pool), tiny_qwen25vl, root, shards, on_shard=on_shard)
    assert {i for i, computed in events if computed} == {q // SHARD_QUERIES for q in users}


def test_corrupt_or_mismatched_shard_is_recomputed(tmp_path):
    path = tmp_path / "judge-000000-x.parquet"
    path.write_bytes(b"not parquet")
    assert js.read_shard(path, ["a"], [1]) is None
    pl.DataFrame(
        {"pair_id": ["b"], "pos_score": [0.5], "cand_scores": [[0.1]]}, schema=js.SHARD_SCHEMA
    ).write_parquet(path)
    assert js.read_shard(path, ["a"], [1]) is None  # other rows
    assert js.read_shard(path, ["b"], [2]) is None  # other candidate count
    assert js.read_shard(path, ["b"], [1]) is not None


def test_content_hash_separates_fields():
    from unime_assets.models.encoding import Item

    digest = {"": "", "b": "digest-of-b", "x.png": "digest-of-x"}.__getitem__
    a = js.content_hash(["p"], [(Item("ab", ""), [Item("c", "")])], digest)
    b = js.content_hash(["p"], [(Item("a", "b"), [Item("c", "")])], digest)
    c = js.content_hash(["p"], [(Item("ab", ""), [Item("c", "x.png")])], digest)
    assert len({a, b, c}) == 3
    assert js.shard_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)] and js.shard_bounds(0, 3) == []
    with pytest.raises(ValueError):
        js.shard_bounds(3, 0)


def test_judge_family_and_dtype_are_part_of_every_shard_key(pool_inputs, tiny_qwen25vl, tiny_internvl, settings,
                                                           tmp_path):  # fmt: skip
    root, shards = settings.train_image_root, tmp_path / "shards"
    fp, prompt = "fingerprint", judging.PAIRWISE_PROMPT
    # the same checkpoint bytes, prompt and engine under another family never share a key
    assert js.run_key(fp, judging.PROMPT_VERSION, prompt, "hf:float32", "qwen2_5_vl") != js.run_key(
        fp, judging.PROMPT_VERSION, prompt, "hf:float32", "internvl"
    )
    run(pool_inputs, tiny_qwen25vl, root, shards)
    events, on_shard = recorder()
    train, candidates, pool = pool_inputs
    other = score_candidate_pool(train, candidates, pool, str(tiny_internvl), str(root), batch_size=4,
                                 shard_dir=shards, shard_queries=SHARD_QUERIES, progress=False,
                                 on_shard=on_shard)  # fmt: skip
    assert len(events) == 5 and all(computed for _, computed in events)  # nothing reused across families
    assert other["pair_id"].to_list() == train["pair_id"].to_list()
    families = {json.loads(p.read_text())["family"] for p in shards.glob("*.json")}
    assert families == {"qwen2_5_vl", "internvl"}
    events, on_shard = recorder()  # another dtype of the same judge: another key
    score_candidate_pool(train, candidates, pool, str(tiny_internvl), str(root), batch_size=4, shard_dir=shards,
                         shard_queries=SHARD_QUERIES, progress=False, on_shard=on_shard, dtype="bfloat16")  # fmt: skip
    assert all(computed for _, computed in events)
    engines = {json.loads(p.read_text())["engine"] for p in shards.glob("*.json")}
    assert "hf:bfloat16" in engines
