"""Fast judge scoring with transformers: one prefix pass per query, each image encoded once.

Every pair of a query shares the tokens up to "Candidate:" (system turn, prompt, query image and
text). `PrefixSharedJudge` runs that prefix once with a KV cache, repeats the cache across a batch
of the query's candidates and runs only the candidate suffixes (candidate image/text, end of turn,
assistant header). Each image goes through the vision tower once and its features are kept in a
byte-bounded LRU cache, then scattered into `inputs_embeds`. Only the last real position of each
suffix reaches `lm_head`.

Exactness, why the result equals one full forward pass per pair:
- the split point is the longest common prefix of token ids between each pair's full tokenization
  and the prefix-only tokenization, so a BPE merge across the "Candidate:" boundary only shortens the
  shared part;
- M-RoPE positions of a suffix are its own `get_rope_index` plus (max prefix position + 1), which is
  what the model's rope index gives for the whole sequence (it walks the groups left to right);
- suffixes are right-padded, so real tokens never attend to padding, and the score is read at each
  row's last real token.
tests/judging/test_prefix_shared.py checks this against a plain full forward pass per pair.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from unime_assets.judging.prompt import (
    PAIRWISE_PROMPT,
    judge_score_from_logits,
    pairwise_messages,
    yes_no_token_ids,
)
from unime_assets.models.encoding import Item

_SENTINEL = "\u241ecandidate-sentinel\u241e"  # never produced by MMEB text; marks where the candidate starts


@dataclass
class EncodedImage:
    grid: torch.Tensor  # (3,) t, h, w patches as the processor returns them
    n_tokens: int  # image pad tokens in the sequence = t*h*w / merge^2
    features: torch.Tensor  # (n_tokens, hidden) vision tower output, on the model's device


class ImageFeatureCache:
    """Vision-tower outputs per image path, LRU-bounded in bytes (a 7B judge's image is MBs)."""

    def __init__(self, model, processor, images: Callable[[str], Image.Image], *, max_bytes: int,
                 max_patches_per_call: int = 32768) -> None:  # fmt: skip
        self.model, self.processor, self.images = model, processor, images
        self.max_bytes, self.max_patches = max_bytes, max_patches_per_call
        self._lru: OrderedDict[str, EncodedImage] = OrderedDict()
        self._bytes = 0
        self.encoded = 0  # images sent through the vision tower (tests and benchmarks read it)
        self.patches = self.patches_sq = 0  # their vision patches, and squared per image (attention work)

    def _put(self, path: str, enc: EncodedImage) -> None:
        size = enc.features.numel() * enc.features.element_size()
        if size > self.max_bytes:
            return
        self._lru[path] = enc
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._lru.popitem(last=False)
            self._bytes -= old.features.numel() * old.features.element_size()

    def get_many(self, paths: Sequence[str]) -> dict[str, EncodedImage]:
        """Features of each path; the missing ones are encoded together (bounded by patch count)."""
        out: dict[str, EncodedImage] = {}
        missing: list[str] = []
        for p in dict.fromkeys(paths):
            if p in self._lru:
                self._lru.move_to_end(p)
                out[p] = self._lru[p]
            else:
                missing.append(p)
        if not missing:
            return out
        proc = self.processor.image_processor
        pix = proc(images=[self.images(p) for p in missing], return_tensors="pt")
        grids, pixels = pix["image_grid_thw"], pix["pixel_values"]
        n_patches = grids.prod(-1).tolist()
        merge = proc.merge_size**2
        device = next(self.model.parameters()).device
        start = 0  # chunks of whole images, at most max_patches patches each (bounds activation memory)
        offsets = np.concatenate([[0], np.cumsum(n_patches)])
        while start < len(missing):
            end = start + 1
            while end < len(missing) and offsets[end + 1] - offsets[start] <= self.max_patches:
                end += 1
            feats = self.model.model.get_image_features(
                pixels[offsets[start] : offsets[end]].to(device),
                grids[start:end].to(device),
                return_dict=True,
            ).pooler_output
            for i, f in zip(range(start, end), feats, strict=True):
                enc = EncodedImage(grid=grids[i], n_tokens=n_patches[i] // merge, features=f)
                out[missing[i]] = enc
                self._put(missing[i], enc)
            self.encoded += end - start
            self.patches += int(offsets[end] - offsets[start])
            self.patches_sq += sum(p * p for p in n_patches[start:end])
            start = end
        return out


def shared_prefix_len(prefix_ids: Sequence[int], full_ids: Sequence[Sequence[int]]) -> int:
    """Longest K such that every full sequence starts with prefix_ids[:K].

    With a tokenizer whose pre-tokenizer can join "Candidate:" with the candidate's first characters,
    the pair's tokens differ from the prefix-only tokens at the boundary; K then stops before it.
    """
    pre = np.asarray(prefix_ids, dtype=np.int64)
    k = len(pre)
    for ids in full_ids:
        a = np.asarray(ids[: len(pre)], dtype=np.int64)
        n = min(len(a), k)
        diff = np.nonzero(a[:n] != pre[:n])[0]
        k = int(diff[0]) if len(diff) else n
        if k == 0:
            break
    return k


def expand_image_ids(ids: Sequence[int], image_id: int, counts: Sequence[int]) -> np.ndarray:
    """Repeat the k-th image token counts[k] times, as the processor does in the text before tokenizing.

    Tokenizing the short text and expanding the ids is the same (the image token is a special token,
    matched before any merge) and much cheaper than tokenizing hundreds of pad tokens per pair.
    """
    arr = np.asarray(ids, dtype=np.int64)
    where = np.nonzero(arr == image_id)[0]
    if len(where) != len(counts):
        raise ValueError(f"judge prompt has {len(where)} image slots but {len(counts)} images")
    reps = np.ones(len(arr), dtype=np.int64)
    reps[where] = counts
    return np.repeat(arr, reps)


def length_buckets(lengths: Sequence[int], batch_size: int, max_waste: float = 0.5) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most batch_size rows, and also cut where a row
    is more than (1 + max_waste) times the batch's shortest: padding stays bounded when text-only
    candidates (tens of tokens) and image candidates (hundreds) are judged for the same query."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and lengths[i] <= (1 + max_waste) * max(lengths[out[-1][0]], 1):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _runs(ids: np.ndarray, token: int) -> int:
    """Number of contiguous runs of `token` (one run per image)."""
    hit = ids == token
    return int(hit[0]) + int(np.sum(hit[1:] & ~hit[:-1])) if len(ids) else 0


class PrefixSharedJudge:
    """Scores (query, [candidates]) groups; same numbers as a full forward pass per pair."""

    def __init__(self, model, processor, images: Callable[[str], Image.Image], *, batch_size: int = 32,
                 image_cache_mb: int = 2048, prompt: str = PAIRWISE_PROMPT) -> None:  # fmt: skip
        self.model, self.processor, self.prompt = model, processor, prompt
        self.batch_size = batch_size
        self.tok = processor.tokenizer
        self.yes_id, self.no_id = yes_no_token_ids(self.tok)
        self.image_id = int(model.config.image_token_id)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.device = next(model.parameters()).device
        self.cache = ImageFeatureCache(model, processor, images, max_bytes=image_cache_mb * 2**20)
        self.forwards = 0  # language-model forward passes, prefix ones counted apart (tests and benchmark)
        self.prefix_forwards = 0
        # LM work done, for FLOP counts: tokens run (suffix padding included), the attention context they
        # saw (sum over tokens of the keys attended), and rows sent to lm_head
        self.work = {"tokens": 0, "context": 0, "head_rows": 0, "prefix_tokens": 0}

    # -- text side -------------------------------------------------------------------------------------
    def _render(self, query: Item, cand: Item) -> str:
        msgs = pairwise_messages(query, cand, self.prompt)
        return self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def _prefix_text(self, query: Item) -> str:
        text = self._render(query, Item(_SENTINEL))
        cut = text.find(_SENTINEL)
        if cut < 0:
            raise RuntimeError("judge chat template dropped the candidate text; cannot split the prefix")
        return text[:cut]

    # -- model side ------------------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        emb = self.model.get_input_embeddings()(ids)
        if feats:
            mask = (ids == self.image_id).unsqueeze(-1).expand_as(emb)
            emb = emb.masked_scatter(mask, torch.cat(feats).to(emb.dtype))  # row-major = image order
        return emb

    def _positions(self, ids: torch.Tensor, mask: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        mm = (ids == self.image_id).to(torch.int32)
        grid = torch.stack(grids).to(ids.device) if grids else None
        pos, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=mm, image_grid_thw=grid, attention_mask=mask
        )
        return pos

    def _lm(self, emb: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
        self.forwards += 1
        out = self.model.model.language_model(
            inputs_embeds=emb, position_ids=pos, cache=cache, use_cache=True
        )
        return out.last_hidden_state

    def _count(self, rows: int, cached: int, width: int, head_rows: int) -> None:
        """A pass of `rows` x `width` tokens after `cached` cached ones: causal context cached + 1 .. + width."""
        self.work["tokens"] += rows * width
        self.work["context"] += rows * (width * cached + width * (width + 1) // 2)
        self.work["head_rows"] += head_rows

    @torch.inference_mode()
    def score_group(self, query: Item, cands: Sequence[Item]) -> np.ndarray:
        """Scores of (query, c) for each candidate, in the given order."""
        if not cands:
            return np.zeros(0, dtype=np.float64)
        from transformers import DynamicCache

        enc = self.cache.get_many([query.image] * bool(query.image) + [c.image for c in cands if c.image])
        prefix_imgs = [query.image] if query.image else []
        pair_imgs = [prefix_imgs + ([c.image] if c.image else []) for c in cands]
        prefix_ids = expand_image_ids(self.tok(self._prefix_text(query))["input_ids"], self.image_id,
                                      [enc[p].n_tokens for p in prefix_imgs])  # fmt: skip
        full_ids = [
            expand_image_ids(ids, self.image_id, [enc[p].n_tokens for p in imgs])
            for ids, imgs in zip(
                self.tok([self._render(query, c) for c in cands])["input_ids"], pair_imgs, strict=True
            )
        ]
        # every suffix keeps at least its last token: the position whose logits are the score
        k = min(shared_prefix_len(prefix_ids, full_ids), min(len(f) for f in full_ids) - 1)
        pre = np.asarray(prefix_ids[:k], dtype=np.int64)
        if k and k < len(full_ids[0]) and pre[-1] == self.image_id and full_ids[0][k] == self.image_id:
            raise RuntimeError("judge prefix split inside an image's tokens")  # image tokens are atomic
        n_pre_imgs = _runs(pre, self.image_id)

        # Shared prefix: one pass, its KV cache reused by every candidate batch.
        cache_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        offset = 0
        if k:
            ids = torch.as_tensor(pre, device=self.device)[None]
            imgs = [enc[p] for p in prefix_imgs[:n_pre_imgs]]
            pos = self._positions(ids, torch.ones_like(ids), [e.grid for e in imgs])
            cache = DynamicCache(config=self.model.config)
            self.prefix_forwards += 1
            self._count(1, 0, k, 0)
            self.work["prefix_tokens"] += k
            self._lm(self._embed(ids, [e.features for e in imgs]), pos, cache)
            cache_kv = [(layer.keys, layer.values) for layer in cache.layers]
            offset = int(pos.max()) + 1

        suffixes = [ids[k:] for ids in full_ids]
        suffix_imgs = [imgs[n_pre_imgs:] for imgs in pair_imgs]
        scores = np.zeros(len(cands), dtype=np.float64)
        for idx in length_buckets([len(x) for x in suffixes], self.batch_size):
            lens = [len(suffixes[i]) for i in idx]
            width = max(lens)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # right padding: pads sit after every real token
                ids[r, : lens[r]] = torch.as_tensor(suffixes[i])
                mask[r, : lens[r]] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            imgs = [enc[p] for i in idx for p in suffix_imgs[i]]
            pos = self._positions(ids, mask, [e.grid for e in imgs]) + offset
            batch_cache = None
            if cache_kv is not None:
                n = len(idx)
                batch_cache = DynamicCache(
                    ddp_cache_data=[
                        (kk.expand(n, -1, -1, -1), vv.expand(n, -1, -1, -1)) for kk, vv in cache_kv
                    ],
                    config=self.model.config,
                )
            self._count(len(idx), k, width, len(idx))
            hidden = self._lm(self._embed(ids, [e.features for e in imgs]), pos, batch_cache)
            last = hidden[
                torch.arange(len(idx), device=self.device), torch.as_tensor(lens, device=self.device) - 1
            ]
            logits = self.model.lm_head(last).float()
            s = judge_score_from_logits(logits[:, self.yes_id], logits[:, self.no_id])
            scores[idx] = s.double().cpu().numpy()
        return scores

    def score_groups(
        self, groups: Sequence[tuple[Item, Sequence[Item]]], on_pairs: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        out = []
        for query, cands in groups:
            out.append(self.score_group(query, cands))
            if on_pairs is not None:
                on_pairs(len(cands))
        return out
