"""Stage 1 of UniME-V2: the global candidate pool and top-K retrieval with the δ rule.

A retriever (VLM2Vec in the paper) embeds every unique training target once (the global
`CandidateIndex`, FAISS exact / IVF / HNSW); each training subset's queries are then searched
against it, and per query the K most similar candidates *strictly less similar than its own
positive* are kept in retrieval order (δ = sim(q, positive), paper Fig. 2).

Modules: `embedding_cache` (embeddings on disk by model and content), `encoder` (the retriever,
loaded on first use), `faiss_index` (index kinds), `search` (the δ-rule search),
`candidate_index` (the global index folder), `pool` (one partition's search), `delta_audit` (with a
ground truth: what the δ rule removed, its precision and recall).

Public functions: `build_candidate_index`, `search_candidate_pool`, `build_candidate_pool`,
`search_below_positive`, `exact_filtered_topk`, `build_index`, `make_index`, `encode_cached`.
"""

from unime_assets.data.candidates import build_candidate_table, candidate_key
from unime_assets.retrieval.candidate_index import (
    INDEX_DIGEST,
    CandidateIndex,
    build_candidate_index,
    check_same_index,
    index_digest,
)
from unime_assets.retrieval.delta_audit import delta_rule_audit
from unime_assets.retrieval.embedding_cache import EmbeddingCache
from unime_assets.retrieval.encoder import Retriever, as_retriever, encode_cached
from unime_assets.retrieval.faiss_index import (
    INDEX_KINDS,
    IndexKind,
    build_index,
    default_nlist,
    faiss_num_gpus,
    make_index,
    set_search_params,
    to_search_device,
)
from unime_assets.retrieval.pool import CandidatePool, build_candidate_pool, search_candidate_pool
from unime_assets.retrieval.search import (
    MAX_SEARCH_DEPTH,
    POOL_SCHEMA,
    PoolResult,
    exact_filtered_topk,
    pool_frame,
    search_below_positive,
)

__all__ = [
    "INDEX_DIGEST",
    "INDEX_KINDS",
    "MAX_SEARCH_DEPTH",
    "POOL_SCHEMA",
    "CandidateIndex",
    "CandidatePool",
    "EmbeddingCache",
    "IndexKind",
    "PoolResult",
    "Retriever",
    "as_retriever",
    "build_candidate_index",
    "build_candidate_pool",
    "build_candidate_table",
    "build_index",
    "candidate_key",
    "check_same_index",
    "default_nlist",
    "delta_rule_audit",
    "encode_cached",
    "exact_filtered_topk",
    "faiss_num_gpus",
    "index_digest",
    "make_index",
    "pool_frame",
    "search_below_positive",
    "search_candidate_pool",
    "set_search_params",
    "to_search_device",
]
