"""MLLM-as-a-Judge: the paper's Yes/No prompt and score = e^yes / (e^yes + e^no).

Message layout follows the official reranker code (the judge script itself was not released):
one user turn [prompt, "Query:", query image?, query text?, "Candidate:", candidate image?,
candidate text?], Qwen chat template with the generation prompt; the score is read from the
logits of the first generated position. MMEB image placeholders are removed from the texts
because the images are given as real image slots.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unime_assets.models.encoding import MMEB_IMAGE_PLACEHOLDER, Item

PAIRWISE_PROMPT = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
    "requirements of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'."
)
PROMPT_VERSION = "unime-v2-pairwise-1"


def judge_score_from_logits(logit_yes, logit_no) -> torch.Tensor:
    """softmax([yes, no])[0] == e^yes / (e^yes + e^no), computed stably as sigmoid(yes - no).

    Half-precision logits are upcast to float32 first: the score is a small difference of logits.
    """
    y, n = torch.as_tensor(logit_yes), torch.as_tensor(logit_no)
    dtype = torch.promote_types(torch.promote_types(y.dtype, n.dtype), torch.float32)
    return torch.sigmoid(y.to(dtype) - n.to(dtype))


def strip_placeholder(text: str) -> str:
    return text.replace(MMEB_IMAGE_PLACEHOLDER + "\n", "").replace(MMEB_IMAGE_PLACEHOLDER, "")


def item_content(item: Item) -> list[dict]:
    parts: list[dict] = []
    if item.image:
        parts.append({"type": "image"})
    text = strip_placeholder(item.text)
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def pairwise_messages(query: Item, candidate: Item, prompt: str = PAIRWISE_PROMPT) -> list[dict]:
    content = [{"type": "text", "text": prompt}, {"type": "text", "text": "Query:"}]
    content += item_content(query)
    content.append({"type": "text", "text": "Candidate:"})
    content += item_content(candidate)
    return [{"role": "user", "content": content}]


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of "Yes" and "No" looked up from the tokenizer (never hard-coded); each must be one token."""
    ids = []
    for word in ("Yes", "No"):
        toks = tokenizer.encode(word, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(
                f"judge tokenizer splits {word!r} into {len(toks)} tokens {toks}; need exactly one"
            )
        ids.append(toks[0])
    return ids[0], ids[1]


def pair_images(
    pairs: Sequence[tuple[Item, Item]], images: Callable[[str], Image.Image]
) -> list[Image.Image]:
    out = []
    for q, c in pairs:  # processor consumes images in order of appearance: query first
        if q.image:
            out.append(images(q.image))
        if c.image:
            out.append(images(c.image))
    return out


@torch.inference_mode()
def score_pairs_plain(
    model, processor, pairs: Sequence[tuple[Item, Item]], images: Callable[[str], Image.Image],
    *, prompt: str = PAIRWISE_PROMPT,
) -> np.ndarray:  # fmt: skip
    """The reference: each pair alone, one full forward pass with full logits, no cache, no tricks.

    Slow by design; the optimized paths are tested and benchmarked against it.
    """
    yes_id, no_id = yes_no_token_ids(processor.tokenizer)
    device = next(model.parameters()).device
    out = np.zeros(len(pairs), dtype=np.float64)
    for i, (q, c) in enumerate(pairs):
        text = processor.apply_chat_template(
            pairwise_messages(q, c, prompt), tokenize=False, add_generation_prompt=True
        )
        imgs = pair_images([(q, c)], images)
        inputs = processor(text=[text], images=imgs or None, return_tensors="pt")
        logits = model(**inputs.to(device), use_cache=False).logits[0, -1].float()
        out[i] = float(judge_score_from_logits(logits[yes_id], logits[no_id]))
    return out


@torch.inference_mode()
def score_pairs(
    model,
    processor,
    pairs: Sequence[tuple[Item, Item]],
    images: Callable[[str], Image.Image],
    *,
    batch_size: int = 32,
    prompt: str = PAIRWISE_PROMPT,
    desc: str = "judge",
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Judge score per (query, candidate) pair, batched and length-bucketed; output keeps input order."""
    yes_id, no_id = yes_no_token_ids(processor.tokenizer)
    device = next(model.parameters()).device
    prompts = [
        processor.apply_chat_template(
            pairwise_messages(q, c, prompt), tokenize=False, add_generation_prompt=True
        )
        for q, c in pairs
    ]
    order = sorted(range(len(pairs)), key=lambda i: (len(prompts[i]), prompts[i].count("<|image_pad|>")))
    scores = np.zeros(len(pairs), dtype=np.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        imgs = pair_images([pairs[i] for i in idx], images)
        inputs = processor(
            text=[prompts[i] for i in idx], images=imgs or None, return_tensors="pt", padding=True
        )
        # Left padding: position -1 is where the first answer token is predicted; keep only it.
        logits = model(**inputs.to(device), logits_to_keep=1, use_cache=False).logits[:, -1].float()
        scores[idx] = judge_score_from_logits(logits[:, yes_id], logits[:, no_id]).double().cpu().numpy()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    return scores


class JudgeEngine(Protocol):
    """A scoring backend: (query, [candidates]) groups in, one score array per group out."""

    def score_groups(
        self, groups: Sequence[tuple[Item, Sequence[Item]]], on_pairs: Callable[[int], None] | None = None
    ) -> list[np.ndarray]: ...


def engine_id(backend: str, vllm_options: Mapping[str, Any] | None = None) -> str:
    """Backend and dtype: they change the numbers, so they are part of every shard's key."""
    if backend == "hf":
        from unime_assets.models.loading import default_dtype, pick_device

        return f"hf:{str(default_dtype(pick_device())).removeprefix('torch.')}"
    if backend == "vllm":
        return f"vllm:{(vllm_options or {}).get('dtype', 'auto')}"
    raise ValueError(f"unknown judge backend {backend!r}; expected 'hf' or 'vllm'")


def make_engine(
    judge_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    backend: Literal["hf", "vllm"] = "hf",
    batch_size: int = 32,
    share_prefix: bool = True,
    image_cache_mb: int = 2048,
    prompt: str = PAIRWISE_PROMPT,
    vllm_options: Mapping[str, Any] | None = None,
) -> JudgeEngine:
    """Load the judge once for a backend: "hf" (prefix-shared or plain batched) or "vllm" (GPU only)."""
    from unime_assets.models.encoding import ImageLoader

    images = ImageLoader(image_root)
    if backend == "vllm":
        from unime_assets.judging_vllm import VllmJudge  # vllm is optional and GPU-only: import on use

        return VllmJudge(str(judge_path), images, prompt=prompt, **dict(vllm_options or {}))
    if backend != "hf":
        raise ValueError(f"unknown judge backend {backend!r}; expected 'hf' or 'vllm'")
    from unime_assets.judge_engine import BatchedPairsJudge, PrefixSharedJudge
    from unime_assets.models.loading import load_model

    lm = load_model(judge_path, role="judge")
    if share_prefix:
        return PrefixSharedJudge(lm.model, lm.processor, images, batch_size=batch_size,
                                 image_cache_mb=image_cache_mb, prompt=prompt)  # fmt: skip
    return BatchedPairsJudge(lm.model, lm.processor, images, batch_size=batch_size, prompt=prompt)


def pool_groups(train, candidates, pool) -> tuple[list[str], list[tuple[Item, list[Item]]]]:
    """Per query: its pair_id and (query, [positive, *candidates in the pool's order])."""
    if train["pair_id"].to_list() != pool["pair_id"].to_list():
        raise ValueError(
            "judge: candidate_pool rows do not match mmeb_train rows (re-materialize candidate_pool)"
        )
    items = [Item(t, p) for t, p in zip(candidates["text"], candidates["image_path"], strict=True)]
    ids = candidates["cand_id"].to_list() if "cand_id" in candidates.columns else list(range(len(items)))
    # pools refer to candidates by cand_id; the table is usually in cand_id order, but do not rely on it
    cand_items = items if ids == list(range(len(items))) else dict(zip(ids, items, strict=True))
    groups = [
        (Item(q_text, q_img), [cand_items[pos_id], *(cand_items[c] for c in cand_ids)])
        for q_text, q_img, pos_id, cand_ids in zip(
            train["qry"], train["qry_image_path"], pool["pos_cand_id"], pool["cand_ids"], strict=True
        )
    ]
    return [str(p) for p in pool["pair_id"].to_list()], groups


def score_candidate_pool(
    train,
    candidates,
    pool,
    judge_path: str,
    image_root: str,
    *,
    batch_size: int = 32,
    shard_dir: str | os.PathLike | None = None,
    shard_queries: int = 1000,
    backend: Literal["hf", "vllm"] = "hf",
    share_prefix: bool = True,
    image_cache_mb: int = 2048,
    vllm_options: Mapping[str, Any] | None = None,
    prompt: str = PAIRWISE_PROMPT,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    on_shard: Callable[[int, int, bool], None] | None = None,
):
    """Judge every (query, positive) and (query, candidate) of the pool: one row per query with
    `pos_score` and `cand_scores` aligned with the pool's `cand_ids`.

    With `shard_dir`, every `shard_queries` queries are written there as one parquet shard, keyed by
    the judge's fingerprint, PROMPT_VERSION and prompt, backend and dtype, and the shard's inputs; a
    restarted run loads the shards it finds and scores only the rest (the judge is loaded only if
    a shard is missing). `on_batch(pairs_done, pairs_total)` reports progress (loaded shards count as
    done); `on_shard(index, n_shards, computed)` runs after each shard is available.
    """
    import polars as pl

    from unime_assets import judge_shards as js

    pair_ids, groups = pool_groups(train, candidates, pool)
    bounds = js.shard_bounds(len(groups), shard_queries if shard_dir is not None else max(len(groups), 1))
    engine: JudgeEngine | None = None

    def get_engine() -> JudgeEngine:
        nonlocal engine
        if engine is None:
            engine = make_engine(judge_path, image_root, backend=backend, batch_size=batch_size,
                                 share_prefix=share_prefix, image_cache_mb=image_cache_mb, prompt=prompt,
                                 vllm_options=vllm_options)  # fmt: skip
        return engine

    engine_name = engine_id(backend, vllm_options)
    run = (
        js.run_key(js.model_fingerprint(judge_path), PROMPT_VERSION, prompt, engine_name) if shard_dir else ""
    )
    total = sum(len(c) for _, c in groups)
    done = 0
    parts: list[pl.DataFrame] = []
    for index, (lo, hi) in enumerate(tqdm(bounds, desc="judge shards", disable=not progress, leave=False)):
        ids, grp = pair_ids[lo:hi], groups[lo:hi]
        n_cands = [len(c) - 1 for _, c in grp]
        path = (
            js.shard_path(shard_dir, index, js.shard_key(run, js.content_hash(ids, grp)))
            if shard_dir
            else None
        )
        df = js.read_shard(path, ids, n_cands) if path is not None else None
        computed = df is None
        if df is None:

            def step(n: int) -> None:
                nonlocal done
                done += n
                if on_batch is not None:
                    on_batch(done, total)

            scores = get_engine().score_groups(grp, on_pairs=step)
            df = pl.DataFrame(
                {"pair_id": ids, "pos_score": [float(s[0]) for s in scores],
                 "cand_scores": [s[1:].tolist() for s in scores]},
                schema=js.SHARD_SCHEMA,
            )  # fmt: skip
            if path is not None:
                js.write_shard(df, path, {"run_key": run, "prompt_version": PROMPT_VERSION, "judge": str(judge_path),
                                          "engine": engine_name, "queries": [lo, hi]})  # fmt: skip
        else:
            done += sum(len(c) for _, c in grp)
            if on_batch is not None:
                on_batch(done, total)
        parts.append(df)
        if on_shard is not None:
            on_shard(index, len(bounds), computed)
    if not parts:
        return pl.DataFrame(schema=js.SHARD_SCHEMA)
    return pl.concat(parts, how="vertical")


def held_out_pairs(
    eval_df, *, max_rows: int = 400, seed: int = 0
) -> tuple[list[tuple[Item, Item]], np.ndarray]:
    """(query, ground truth) positives and (query, random other candidate of its row) negatives."""
    rng = np.random.default_rng(seed)
    rows = (
        eval_df.sample(n=min(max_rows, eval_df.height), seed=seed) if eval_df.height > max_rows else eval_df
    )
    pairs, labels = [], []
    for r in rows.iter_rows(named=True):
        if len(r["tgt_text"]) < 2:
            continue
        query = Item(r["qry_text"], r["qry_img_path"])
        j = int(rng.integers(1, len(r["tgt_text"])))
        pairs += [
            (query, Item(r["tgt_text"][0], r["tgt_img_path"][0])),
            (query, Item(r["tgt_text"][j], r["tgt_img_path"][j])),
        ]
        labels += [1, 0]
    return pairs, np.asarray(labels)


def score_quality(pos_scores: np.ndarray, cand_scores: Sequence[np.ndarray]) -> dict[str, float]:
    """Monitoring numbers for a judge score matrix (NaN where undefined).

    - auc_pos_vs_candidates: all positives vs all candidates pooled (ties count half);
    - auc_within_query: per query, P(positive > its candidate) (ties half), averaged over queries;
    - false_negative_rate: fraction of all candidates scoring above their own query's positive;
    - false_negative_rate_per_query: that fraction per query, averaged over queries;
    - frac_queries_with_false_negative: queries with at least one candidate above their positive;
    - frac_pos_below_0.5: queries whose positive the judge does not accept.
    """
    from sklearn.metrics import roc_auc_score

    nan = float("nan")
    pos = np.asarray(pos_scores, dtype=np.float64)
    cands = [np.asarray(c, dtype=np.float64) for c in cand_scores]
    if len(cands) != len(pos):
        raise ValueError(f"score_quality: {len(pos)} positives but {len(cands)} candidate lists")
    flat = np.concatenate(cands) if cands else np.empty(0)
    rows = [(p, c) for p, c in zip(pos, cands, strict=True) if len(c)]
    above = [int(np.sum(c > p)) for p, c in rows]
    within = [float(np.mean((p > c) + 0.5 * (p == c))) for p, c in rows]
    labels, values = np.r_[np.ones(len(pos)), np.zeros(len(flat))], np.r_[pos, flat]
    return {
        "auc_pos_vs_candidates": float(roc_auc_score(labels, values)) if len(flat) and len(pos) else nan,
        "auc_within_query": float(np.mean(within)) if within else nan,
        "false_negative_rate": float(sum(above) / len(flat)) if len(flat) else nan,
        "false_negative_rate_per_query": float(
            np.mean([a / len(c) for a, (_, c) in zip(above, rows, strict=True)])
        )
        if rows
        else nan,
        "frac_queries_with_false_negative": float(np.mean([a > 0 for a in above])) if rows else nan,
        "frac_pos_below_0.5": float(np.mean(pos < 0.5)) if len(pos) else nan,
        "mean_pos_score": float(pos.mean()) if len(pos) else nan,
        "mean_cand_score": float(flat.mean()) if len(flat) else nan,
    }
