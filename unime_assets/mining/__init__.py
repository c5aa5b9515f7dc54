"""Stage 3 of UniME-V2: hard-negative mining from judge scores.

Per query, over its top-K candidates in retrieval order: drop candidates scoring above
(positive score − β) as likely false negatives, take every 5th survivor up to 10, repeat
cyclically when short, and fall back to 10 random candidates with score 1.0 when none survives.
The peers' rules (NV-Retriever TopK-Abs / MarginPos / PercPos, rank window, top, random) are
options for comparison.

Modules: `rules` (one pure function per rule, per query), `table` (`MiningParams`, a whole
partition), `filters` (what each rule's filter keeps and drops, for metadata).

Public functions: `sample_unime_v2`, `mine_unime_v2`, the `mine_*` rules, `mine_query`,
`mine_table`, `filter_counts`, `filter_rates`, `kept_and_dropped`, `survivor_mask`.
"""

from unime_assets.mining.audit import AUDIT_RULES, rule_audit
from unime_assets.mining.filters import filter_counts, filter_rates, kept_and_dropped, survivor_mask
from unime_assets.mining.rules import (
    FILTER_STRATEGIES,
    STRATEGIES,
    MinedNegatives,
    mine_random,
    mine_rank_window,
    mine_top,
    mine_topk_abs,
    mine_topk_margin_pos,
    mine_topk_perc_pos,
    mine_unime_v2,
    sample_unime_v2,
)
from unime_assets.mining.table import MiningParams, mine_query, mine_table, query_seed

__all__ = [
    "AUDIT_RULES",
    "FILTER_STRATEGIES",
    "STRATEGIES",
    "MinedNegatives",
    "MiningParams",
    "filter_counts",
    "filter_rates",
    "kept_and_dropped",
    "mine_query",
    "mine_random",
    "mine_rank_window",
    "mine_table",
    "mine_top",
    "mine_topk_abs",
    "mine_topk_margin_pos",
    "mine_topk_perc_pos",
    "mine_unime_v2",
    "query_seed",
    "rule_audit",
    "sample_unime_v2",
    "survivor_mask",
]
