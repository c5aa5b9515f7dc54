"""Run models over MMEB eval subsets: the V1 protocol, an embedding cache, optional reranking.

Per subset, unique queries and unique (text, image) candidates are encoded once; each row ranks
only its own candidates by cosine; a hit is argmax == 0 (ties go to the ground truth). Embeddings
are cached on disk by (model fingerprint, precision, image size) and item content, so evaluating
an unchanged model again encodes nothing and does not even load it.

With the reranker, the embedder's top-k of each row is reordered, listwise (greedy answer, first
"(n)") or pairwise (P(Yes) per candidate, descending, ties keep the embedder's order). As in the
official eval (Embedding/eval_rerank.py) by default, an unparsable listwise answer is a miss and a
row is a hit when the chosen candidate has the ground truth's content (text and image path), so a
duplicate of the GT counts; `unparsable="embedder_order"` / `hit="index"` give the lenient variant
(keep the embedder's order; only the GT's own index counts). Unparsable answers are counted either
way. A reranked subset is cached as JSON keyed by the reranker's and embedder's weights, the
subset's rows and the rerank settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from unime_assets.evaluation import metrics
from unime_assets.fingerprints import checkpoint_fingerprint, hash_fields
from unime_assets.models.encoding import ImageLoader, Item
from unime_assets.reranking import RERANK_MODES, rerank_listwise, rerank_pairwise
from unime_assets.retrieval.embedding_cache import EmbeddingCache, image_digests, item_keys, namespace

Log = Callable[[str], None]


class ModelHandle:
    """A checkpoint loaded on first use only: a fully cached evaluation never loads it."""

    def __init__(self, path: str | Path, role: str = "model"):
        self.path, self.role = Path(path), role
        self._lm = None
        self._fp: str | None = None

    @property
    def lm(self):
        if self._lm is None:
            from unime_assets.models.loading import load_model

            self._lm = load_model(self.path, role=self.role)
        return self._lm

    @property
    def loaded(self) -> bool:
        return self._lm is not None

    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the checkpoint directory (computed once)."""
        if self._fp is None:
            self._fp = checkpoint_fingerprint(self.path)
        return self._fp

    def cache_namespace(self, resize: int | None) -> str:
        from unime_assets.models.loading import default_dtype, pick_device

        # load_model picks the same dtype, so the namespace is known before (or without) loading.
        return namespace(self.fingerprint, dtype=str(default_dtype(pick_device())), resize=resize)

    def release(self) -> None:
        self._lm = None


@dataclass
class EncodeStats:
    encoded: int = 0
    cached: int = 0

    def add(self, other: EncodeStats) -> None:
        self.encoded += other.encoded
        self.cached += other.cached


def encode(model: ModelHandle, items: Sequence[Item], images: ImageLoader, *, batch_size: int,
           cache_dir: str | Path | None = None, desc: str = "eval encode") -> tuple[np.ndarray, EncodeStats]:  # fmt: skip
    """Embeddings of `items` (order kept), through the on-disk cache when `cache_dir` is set.

    Cache keys are by content (text and image bytes), so items of different image roots never mix.
    """
    from unime_assets.models.encoding import encode_items

    def compute(positions: list[int]) -> np.ndarray:
        lm = model.lm
        return encode_items(lm.model, lm.processor, [items[i] for i in positions], images, lm.image_token,
                            batch_size=batch_size, desc=desc)  # fmt: skip

    if cache_dir is None:
        return compute(list(range(len(items)))), EncodeStats(encoded=len(items))
    resize = images.resize[0] if images.resize else None
    cache = EmbeddingCache(cache_dir, model.cache_namespace(resize),
                           source={"model": str(model.path), "fingerprint": model.fingerprint})  # fmt: skip
    keys = item_keys(items, image_digests(images.root, cache_dir))
    emb, stats = cache.get_or_compute(keys, compute)
    return emb, EncodeStats(encoded=stats.n_encoded, cached=stats.n_cached)


def unique_items(rows: pl.DataFrame) -> dict[Item, int]:
    """Unique query and candidate items of a subset (MMEB V1: each encoded once), in first-seen order."""
    uniq: dict[Item, int] = {}
    for q, qi, ts, tis in rows.select("qry_text", "qry_img_path", "tgt_text", "tgt_img_path").iter_rows():
        uniq.setdefault(Item(q, qi), len(uniq))
        for t, p in zip(ts, tis, strict=True):
            uniq.setdefault(Item(t, p), len(uniq))
    return uniq


def subset_fingerprint(rows: pl.DataFrame, image_size: int | None, image_digest: Callable[[str], str]) -> str:
    """Content hash of a subset's rows (texts and image bytes, via `image_digest`, e.g.
    `fingerprints.ImageDigests`) and the eval setting, to tell whether stored scores are comparable."""
    fields: list[object] = ["mmeb-subset", image_size, "mmeb-v1-p@1"]
    for q, qi, ts, tis in rows.select("qry_text", "qry_img_path", "tgt_text", "tgt_img_path").iter_rows():
        fields += [q, image_digest(qi), len(ts)]
        for t, ti in zip(ts, tis, strict=True):
            fields += [t, image_digest(ti)]
    return hash_fields(*fields)[:16]


def embed_subset(model: ModelHandle, rows: pl.DataFrame, images: ImageLoader, batch_size: int,
                 cache_dir: str | Path | None = None) -> tuple[list[np.ndarray], EncodeStats]:  # fmt: skip
    """Cosine scores per row against that row's own candidates, GT first."""
    uniq = unique_items(rows)
    emb, stats = encode(model, list(uniq), images, batch_size=batch_size, cache_dir=cache_dir)
    q = np.stack([emb[uniq[Item(t, p)]] for t, p in rows.select("qry_text", "qry_img_path").iter_rows()])
    c = [np.stack([emb[uniq[Item(t, p)]] for t, p in zip(ts, ps, strict=True)])
         for ts, ps in rows.select("tgt_text", "tgt_img_path").iter_rows()]  # fmt: skip
    return metrics.row_predictions(q, c), stats


@dataclass
class SubsetResult:
    subset: str
    precision_at_1: float
    n_rows: int
    row_scores: list[np.ndarray] = field(repr=False, default_factory=list)
    encoded: int = 0
    cached: int = 0
    tied_top: int = 0  # rows whose top score is an exact tie (metrics.top_ties)
    gt_tied: int = 0  # ... with the ground truth among the tied: hits only under argmax's rule


def evaluate_model(model: ModelHandle | str | Path, eval_df: pl.DataFrame, image_root: str | Path, *,
                   image_size: int | None, batch_size: int, cache_dir: str | Path | None = None,
                   log: Log | None = None) -> dict[str, SubsetResult]:  # fmt: skip
    """P@1 per subset of `eval_df` (column `subset`), in the table's subset order."""
    handle = model if isinstance(model, ModelHandle) else ModelHandle(model)
    images = ImageLoader(image_root, resize=image_size)
    out: dict[str, SubsetResult] = {}
    for (name,), rows in eval_df.group_by("subset", maintain_order=True):
        scores, st = embed_subset(handle, rows, images, batch_size, cache_dir)
        out[str(name)] = SubsetResult(str(name), metrics.precision_at_1(scores), rows.height, scores, st.encoded,
                                      st.cached, *metrics.top_ties(scores))  # fmt: skip
        if log:
            log(f"{name}: P@1 {out[str(name)].precision_at_1:.3f} over {rows.height} rows "
                f"({st.encoded} encoded, {st.cached} cached)")  # fmt: skip
    return out


RERANK_UNPARSABLE = ("miss", "embedder_order")
RERANK_HIT = ("content", "index")


@dataclass
class RerankOutcome:
    precision_at_1: float
    unparsable: int  # listwise answers without a valid "(n)"; always 0 pairwise
    n_rows: int
    mode: str
    orders: list[list[int]] = field(repr=False, default_factory=list)  # reranked candidate ids per row
    hits: list[bool] = field(repr=False, default_factory=list)  # per row, under the hit rule


def _is_hit(order: list[int], items: list[Item], rule: str) -> bool:
    """The top candidate is the ground truth: by content (its (text, image) equals the GT's, as the
    official eval compares them) or by index (candidate 0 itself)."""
    return order[0] == 0 if rule == "index" else items[order[0]] == items[0]


def rerank_subset(reranker, rows: pl.DataFrame, row_scores: Sequence[np.ndarray], images: Callable, *,
                  top_k: int, batch_size: int, mode: str = "listwise", max_new_tokens: int = 128,
                  unparsable: str = "miss", hit: str = "content") -> RerankOutcome:  # fmt: skip
    """Rerank each row's embedder top-k with a loaded reranker (`LoadedModel`), P@1 after reranking.

    A row whose ground truth (or, by content, a duplicate of it) is outside the embedder's top-k
    stays a miss. Listwise, an answer without a valid "(n)" is a miss (`unparsable="miss"`, official)
    or keeps the embedder's order (`"embedder_order"`); `hit` is the rule above (`_is_hit`).
    """
    if mode not in RERANK_MODES:
        raise ValueError(f"rerank mode {mode!r}; expected one of {RERANK_MODES}")
    if unparsable not in RERANK_UNPARSABLE or hit not in RERANK_HIT:
        raise ValueError(f"rerank unparsable={unparsable!r} / hit={hit!r}; expected one of "
                         f"{RERANK_UNPARSABLE} / {RERANK_HIT}")  # fmt: skip
    queries, lists, embed_orders, row_items = [], [], [], []
    for r, scores in zip(rows.iter_rows(named=True), row_scores, strict=True):
        order = metrics.top_k_order(scores, top_k)
        items = [Item(t, p) for t, p in zip(r["tgt_text"], r["tgt_img_path"], strict=True)]
        embed_orders.append(order)
        row_items.append(items)
        queries.append(Item(r["qry_text"], r["qry_img_path"]))
        lists.append([items[j] for j in order])
    n_unparsable = 0
    final: list[list[int]] = []
    hits: list[bool] = []
    if mode == "listwise":
        texts = rerank_listwise(reranker.model, reranker.processor, queries, lists, images, batch_size=batch_size,
                                max_new_tokens=max_new_tokens)  # fmt: skip
        for order, text, items in zip(embed_orders, texts, row_items, strict=True):
            chosen = metrics.parse_listwise_answer(text, len(order))
            n_unparsable += chosen is None
            final.append(metrics.rerank_order(order, chosen))  # None keeps the embedder's order
            miss = chosen is None and unparsable == "miss"
            hits.append(not miss and _is_hit(final[-1], items, hit))
    else:
        probs = rerank_pairwise(
            reranker.model, reranker.processor, queries, lists, images, batch_size=batch_size
        )
        final = [metrics.pairwise_order(order, p) for order, p in zip(embed_orders, probs, strict=True)]
        hits = [_is_hit(o, items, hit) for o, items in zip(final, row_items, strict=True)]
    return RerankOutcome(sum(hits) / max(len(final), 1), n_unparsable, len(final), mode, final, hits)


def rerank_cache_key(reranker: ModelHandle, embedder: ModelHandle, subset_fp: str, *, image_size: int | None,
                     **settings) -> str:  # fmt: skip
    """What a reranked subset depends on: the reranker's weights, the embedder's top-k (its weights and
    image size), the subset's rows, and the rerank settings (mode, top_k, image budget, ...)."""
    return hash_fields("rerank", reranker.fingerprint, embedder.cache_namespace(image_size), subset_fp,
                       json.dumps(settings, sort_keys=True, default=str))[:32]  # fmt: skip


def load_rerank(cache_dir: str | Path, key: str) -> RerankOutcome | None:
    f = Path(cache_dir) / f"{key}.json"
    if not f.is_file():
        return None
    f.touch()  # its mtime is its last use (garbage collection: unime_assets.maintenance)
    d = json.loads(f.read_text())
    return RerankOutcome(d["precision_at_1"], d["unparsable"], d["n_rows"], d["mode"], d["orders"], d.get("hits", []))


def save_rerank(cache_dir: str | Path, key: str, outcome: RerankOutcome) -> None:
    from unime_assets.io import atomic_path

    with atomic_path(Path(cache_dir) / f"{key}.json") as tmp:
        tmp.write_text(json.dumps({"precision_at_1": outcome.precision_at_1, "unparsable": outcome.unparsable,
                                   "n_rows": outcome.n_rows, "mode": outcome.mode, "orders": outcome.orders,
                                   "hits": outcome.hits}))  # fmt: skip


# Zero-shot retrieval prompts of the official eval (paper.md §8): an instruction on the image side,
# the raw caption on the text side.
ZS_IMAGE_PROMPT = "<|image_1|> Find an image caption describing the given image."


def evaluate_retrieval_set(model: ModelHandle, ds, *, image_size: int | None, batch_size: int,
                           cache_dir: str | Path | None = None) -> dict[str, float]:  # fmt: skip
    """Recall@1/5/10 text->image and image->text of a `data.zeroshot.RetrievalSet`."""
    images = ImageLoader(ds.image_root, resize=image_size)
    img, _ = encode(model, [Item(ZS_IMAGE_PROMPT, p) for p in ds.images], images, batch_size=batch_size,
                    cache_dir=cache_dir, desc=f"{ds.name} images")  # fmt: skip
    txt, _ = encode(model, [Item(c) for c in ds.captions], images, batch_size=batch_size, cache_dir=cache_dir,
                    desc=f"{ds.name} captions")  # fmt: skip
    return metrics.retrieval_recall(img, txt, ds.caption_image)


def evaluate_composition_set(model: ModelHandle, ds, *, image_size: int | None, batch_size: int,
                             cache_dir: str | Path | None = None) -> dict[str, float]:  # fmt: skip
    """SugarCrepe accuracy per subset and the Replace / Swap / Add means (over the subsets present)."""
    from unime_assets.data.zeroshot import SUGARCREPE_GROUPS

    images = ImageLoader(ds.image_root, resize=image_size)
    out: dict[str, float] = {}
    for sub, triples in ds.subsets.items():
        items = [Item(ZS_IMAGE_PROMPT, im) for im, _, _ in triples]
        items += [Item(pos) for _, pos, _ in triples] + [Item(neg) for _, _, neg in triples]
        emb, _ = encode(model, items, images, batch_size=batch_size, cache_dir=cache_dir, desc=f"sugarcrepe {sub}")  # fmt: skip
        n = len(triples)
        img, pos, neg = emb[:n], emb[n : 2 * n], emb[2 * n :]
        out[sub] = metrics.composition_accuracy((img * pos).sum(axis=1), (img * neg).sum(axis=1))
    for group, subs in SUGARCREPE_GROUPS.items():
        present = [out[s] for s in subs if s in out]
        if present:
            out[group] = float(np.mean(present))
    return out
