"""Prefix-shared judge engine: same scores as one plain full forward pass per pair, each image encoded once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from judge_cases import SIZES, mixed_groups, write_images

from unime_assets.judging import score_pairs_plain
from unime_assets.judging.prefix_shared import PrefixSharedJudge, length_buckets, shared_prefix_len
from unime_assets.models.encoding import ImageLoader, Item
from unime_assets.models.loading import load_model


@pytest.fixture(scope="module")
def judge(tiny_qwen25vl):
    return load_model(tiny_qwen25vl, role="judge")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> ImageLoader:
    return write_images(tmp_path_factory.mktemp("judge_images"))


def test_prefix_shared_scores_equal_a_plain_forward_per_pair(judge, images):
    groups = mixed_groups()
    engine = PrefixSharedJudge(judge.model, judge.processor, images, batch_size=3)
    ours = engine.score_groups(groups)
    pairs = [(q, c) for q, cands in groups for c in cands]
    plain = score_pairs_plain(judge.model, judge.processor, pairs, images)
    flat = np.concatenate(ours)
    assert [len(s) for s in ours] == [len(c) for _, c in groups]
    assert np.abs(flat - plain).max() <= 1e-4
    assert flat.std() > 1e-3  # the scores differ between pairs, so an ordering bug would show
    # every image path through the vision tower exactly once
    assert engine.cache.encoded == len(
        {p for q, cs in groups for p in [q.image, *(c.image for c in cs)] if p}
    )
    # one prefix pass per query; candidate suffixes batched (length buckets of at most 3 rows)
    assert engine.prefix_forwards == len(groups)
    n_pairs = sum(len(c) for _, c in groups)
    assert math.ceil(n_pairs / 3) <= engine.forwards - engine.prefix_forwards < n_pairs


def test_suffix_positions_equal_the_full_sequence_rope_index(judge, images):
    """M-RoPE: positions of the suffix alone, shifted by (max prefix position + 1), equal the full sequence's."""
    engine = PrefixSharedJudge(judge.model, judge.processor, images)
    query, cand = Item("<|image_1|>\nWhat is shown?", "e.png"), Item("an image caption", "b.png")
    inputs = judge.processor(
        text=[engine._render(query, cand)], images=[images("e.png"), images("b.png")], return_tensors="pt"
    )
    full, _ = judge.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    ids = inputs["input_ids"]
    prefix_len = shared_prefix_len(
        judge.processor(text=[engine._prefix_text(query)], images=[images("e.png")])["input_ids"][0],
        ids.tolist(),
    )
    grids = inputs["image_grid_thw"]
    pre = engine._positions(ids[:, :prefix_len], torch.ones_like(ids[:, :prefix_len]), [grids[0]])
    suf = engine._positions(ids[:, prefix_len:], torch.ones_like(ids[:, prefix_len:]), [grids[1]])
    assert torch.equal(torch.cat([pre, suf + pre.max() + 1], dim=-1), full)


def test_batch_size_and_cache_budget_do_not_change_scores(judge, images):
    groups = mixed_groups()[:2]
    a = np.concatenate(
        PrefixSharedJudge(judge.model, judge.processor, images, batch_size=64).score_groups(groups)
    )
    tiny_cache = PrefixSharedJudge(judge.model, judge.processor, images, batch_size=2, image_cache_mb=0)
    b = np.concatenate(tiny_cache.score_groups(groups))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert tiny_cache.cache.encoded > len(SIZES)  # nothing kept: images re-encoded per query


def test_length_buckets_bound_rows_and_padding():
    lengths = [10, 300, 12, 11, 290, 14, 13, 400, 15]
    buckets = length_buckets(lengths, batch_size=3)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in buckets)
    for b in buckets:  # sorted inside, and no row more than 1.5x the shortest of its batch
        ls = [lengths[i] for i in b]
        assert ls == sorted(ls) and max(ls) <= 1.5 * min(ls)
    assert [[lengths[i] for i in b] for b in buckets] == [[10, 11, 12], [13, 14, 15], [290, 300, 400]]
    assert [len(b) for b in length_buckets([10, 16, 24], batch_size=8)] == [
        1,
        2,
    ]  # 16 > 1.5 x 10, 24 <= 1.5 x 16


def test_shared_prefix_stops_where_any_pair_tokenizes_differently():
    prefix = [1, 2, 3, 4]
    assert shared_prefix_len(prefix, [[1, 2, 3, 4, 9], [1, 2, 3, 4]]) == 4
    # a BPE merge of "Candidate:" with the candidate's first characters changes token 3 of one pair
    assert shared_prefix_len(prefix, [[1, 2, 3, 4, 9], [1, 2, 7, 8]]) == 2
    assert shared_prefix_len(prefix, [[5, 2, 3, 4]]) == 0
    assert shared_prefix_len(prefix, [[1, 2]]) == 2


def test_empty_candidate_list_gives_empty_scores(judge, images):
    engine = PrefixSharedJudge(judge.model, judge.processor, images)
    out = engine.score_groups([(Item("q"), []), (Item("q"), [Item("c")])])
    assert out[0].shape == (0,) and out[1].shape == (1,)


def test_work_counters_count_what_the_engine_ran(judge, images):
    """The FLOP accounting the benchmarks rely on: LM tokens (padding included), lm_head rows, vision patches."""
    groups = mixed_groups()[:3]
    engine = PrefixSharedJudge(judge.model, judge.processor, images, batch_size=3)
    seen = []
    real_lm = engine._lm

    def spy(emb, pos, cache):
        seen.append((emb.shape[0], emb.shape[1], 0 if cache is None else cache.get_seq_length()))
        return real_lm(emb, pos, cache)

    engine._lm = spy
    engine.score_groups(groups)
    assert engine.work["tokens"] == sum(rows * width for rows, width, _ in seen)
    # causal context: a row of `width` new tokens after `cached` ones attends cached+1 .. cached+width keys
    assert engine.work["context"] == sum(r * (w * c + w * (w + 1) // 2) for r, w, c in seen)
    assert engine.work["head_rows"] == sum(len(c) for _, c in groups)
    grids = judge.processor.image_processor(
        images=[images(p) for p in sorted({p for q, cs in groups for p in [q.image, *(c.image for c in cs)] if p})],
        return_tensors="pt",
    )["image_grid_thw"]
    assert engine.cache.patches == int(grids.prod(-1).sum())
    assert engine.cache.patches_sq == int((grids.prod(-1) ** 2).sum())
