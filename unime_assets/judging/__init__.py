"""Stage 2 of UniME-V2: MLLM-as-a-Judge soft scores.

The judge (Qwen2.5-VL-7B in the paper) answers the pairwise prompt for every (query, candidate)
and (query, positive) pair; the score is e^yes / (e^yes + e^no) at the first generated token.

Modules: `prompt` (prompt text, message layout, the score formula, Yes/No ids), `plain` (the
one-pair-per-pass reference and batched transformers scoring), `prefix_shared` (the fast engine:
query prefix once in a KV cache, each image encoded once), `vllm_backend` (optional, GPU only,
imported on use), `engines` (backend choice), `shards` (resumable, content-keyed shards),
`pool_scoring` (a partition's candidate pool), `quality` (held-out AUC and score statistics),
`ensemble` (several judges' scores combined per pair by a rule, and their agreement).

Public functions: `judge_score_from_logits`, `pairwise_messages`, `yes_no_token_ids`,
`score_pairs_plain`, `score_pairs`, `make_engine`, `score_candidate_pool`, `held_out_pairs`,
`score_quality`, `align_tables`, `combine`, `agreement`.
"""

from unime_assets.judging.engines import JudgeEngine, engine_id, make_engine
from unime_assets.judging.ensemble import RULES as ENSEMBLE_RULES
from unime_assets.judging.ensemble import agreement, align_tables, combine, reliability_weights, to_table
from unime_assets.judging.plain import BatchedPairsJudge, score_pairs, score_pairs_plain
from unime_assets.judging.pool_scoring import pool_groups, score_candidate_pool
from unime_assets.judging.prefix_shared import PrefixSharedJudge
from unime_assets.judging.prompt import (
    PAIRWISE_PROMPT,
    PROMPT_VERSION,
    item_content,
    judge_score_from_logits,
    pair_images,
    pairwise_messages,
    strip_placeholder,
    yes_no_token_ids,
)
from unime_assets.judging.quality import held_out_pairs, score_quality

__all__ = [
    "ENSEMBLE_RULES",
    "PAIRWISE_PROMPT",
    "PROMPT_VERSION",
    "BatchedPairsJudge",
    "JudgeEngine",
    "PrefixSharedJudge",
    "agreement",
    "align_tables",
    "combine",
    "engine_id",
    "held_out_pairs",
    "item_content",
    "judge_score_from_logits",
    "make_engine",
    "pair_images",
    "pairwise_messages",
    "pool_groups",
    "score_candidate_pool",
    "score_pairs",
    "score_pairs_plain",
    "reliability_weights",
    "score_quality",
    "strip_placeholder",
    "to_table",
    "yes_no_token_ids",
]
