"""MLLM-as-a-Judge: the paper's Yes/No prompt and score = e^yes / (e^yes + e^no).

Message layout follows the official reranker code (the judge script itself was not released):
one user turn [prompt, "Query:", query image?, query text?, "Candidate:", candidate image?,
candidate text?], Qwen chat template with the generation prompt; the score is read from the
logits of the first generated position. MMEB image placeholders are removed from the texts
because the images are given as real image slots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
            raise ValueError(f"judge tokenizer splits {word!r} into {len(toks)} tokens {toks}; need exactly one")
        ids.append(toks[0])
    return ids[0], ids[1]


def pair_images(pairs: Sequence[tuple[Item, Item]], images: Callable[[str], Image.Image]) -> list[Image.Image]:
    out = []
    for q, c in pairs:  # processor consumes images in order of appearance: query first
        if q.image:
            out.append(images(q.image))
        if c.image:
            out.append(images(c.image))
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
        processor.apply_chat_template(pairwise_messages(q, c, prompt), tokenize=False, add_generation_prompt=True)
        for q, c in pairs
    ]
    order = sorted(range(len(pairs)), key=lambda i: (len(prompts[i]), prompts[i].count("<|image_pad|>")))
    scores = np.zeros(len(pairs), dtype=np.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        imgs = pair_images([pairs[i] for i in idx], images)
        inputs = processor(text=[prompts[i] for i in idx], images=imgs or None, return_tensors="pt", padding=True)
        # Left padding: position -1 is where the first answer token is predicted; keep only it.
        logits = model(**inputs.to(device), logits_to_keep=1, use_cache=False).logits[:, -1].float()
        scores[idx] = judge_score_from_logits(logits[:, yes_id], logits[:, no_id]).double().cpu().numpy()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    return scores


def score_candidate_pool(
    train,
    candidates,
    pool,
    judge_path: str,
    image_root: str,
    *,
    batch_size: int = 32,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
):
    """Judge every (query, positive) and (query, candidate) of the pool: one row per query with
    `pos_score` and `cand_scores` aligned with the pool's `cand_ids`."""
    import polars as pl

    from unime_assets.models.encoding import ImageLoader
    from unime_assets.models.loading import load_model

    if train["pair_id"].to_list() != pool["pair_id"].to_list():
        raise ValueError("judge: candidate_pool rows do not match mmeb_train rows (re-materialize candidate_pool)")
    lm = load_model(judge_path, role="judge")
    cand_items = [Item(t, p) for t, p in zip(candidates["text"], candidates["image_path"], strict=True)]
    pairs: list[tuple[Item, Item]] = []
    offsets = [0]
    for q_text, q_img, pos_id, cand_ids in zip(
        train["qry"], train["qry_image_path"], pool["pos_cand_id"], pool["cand_ids"], strict=True
    ):
        query = Item(q_text, q_img)
        pairs.append((query, cand_items[pos_id]))
        pairs.extend((query, cand_items[c]) for c in cand_ids)
        offsets.append(len(pairs))
    scores = score_pairs(lm.model, lm.processor, pairs, ImageLoader(image_root), batch_size=batch_size,
                         progress=progress, on_batch=on_batch)  # fmt: skip
    pos = [float(scores[offsets[i]]) for i in range(len(offsets) - 1)]
    cand = [scores[offsets[i] + 1 : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    return pl.DataFrame(
        {"pair_id": pool["pair_id"], "pos_score": pos, "cand_scores": cand},
        schema_overrides={"cand_scores": pl.List(pl.Float64)},
    )


def held_out_pairs(eval_df, *, max_rows: int = 400, seed: int = 0) -> tuple[list[tuple[Item, Item]], np.ndarray]:
    """(query, ground truth) positives and (query, random other candidate of its row) negatives."""
    rng = np.random.default_rng(seed)
    rows = eval_df.sample(n=min(max_rows, eval_df.height), seed=seed) if eval_df.height > max_rows else eval_df
    pairs, labels = [], []
    for r in rows.iter_rows(named=True):
        if len(r["tgt_text"]) < 2:
            continue
        query = Item(r["qry_text"], r["qry_img_path"])
        j = int(rng.integers(1, len(r["tgt_text"])))
        pairs += [(query, Item(r["tgt_text"][0], r["tgt_img_path"][0])), (query, Item(r["tgt_text"][j], r["tgt_img_path"][j]))]
        labels += [1, 0]
    return pairs, np.asarray(labels)


def score_quality(pos_scores: np.ndarray, cand_scores: list[np.ndarray]) -> dict[str, float]:
    """Monitoring numbers: AUC of positives vs their candidates, false-negative rate, weak positives."""
    from sklearn.metrics import roc_auc_score

    pos = np.asarray(pos_scores, dtype=np.float64)
    flat = np.concatenate([np.asarray(c, dtype=np.float64) for c in cand_scores]) if cand_scores else np.empty(0)
    above = [float(np.mean(np.asarray(c) > p)) for p, c in zip(pos, cand_scores, strict=True) if len(c)]
    auc = (
        float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(flat))], np.r_[pos, flat]))
        if len(flat) and len(pos)
        else float("nan")
    )
    return {
        "auc_pos_vs_candidates": auc,
        "false_negative_rate": float(np.mean(above)) if above else float("nan"),
        "frac_pos_below_0.5": float(np.mean(pos < 0.5)) if len(pos) else float("nan"),
        "mean_pos_score": float(pos.mean()) if len(pos) else float("nan"),
        "mean_cand_score": float(flat.mean()) if len(flat) else float("nan"),
    }
