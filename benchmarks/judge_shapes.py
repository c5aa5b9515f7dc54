"""A shape-faithful Qwen2.5-VL judge and MMEB-train's token mix, for the judge benchmarks (no hub, no data).

The judge has the real widths of Qwen2.5-VL-3B or -7B (hidden size, heads, KV heads, MLP size,
vocabulary, vision tower width and patching) and only a few LM layers and vision blocks, with
random weights: per layer, per image and per logit position it costs what the real model costs, so
the split between vision tower, prefix, suffix and LM head is the real one up to the depth (which the
benchmark scales back up by counting FLOPs). The tokenizer is a word-level BPE trained here; a text
of n words is about n tokens, so the mix below is stated in tokens.

`MMEB_TRAIN_MIX` is one row per MMEB-train subset: its rows at the paper's 50K cap (`data/catalog.py`
names, counts from the dataset card, sum 662K), which side has an image, the text lengths (the
instruction as stored plus a typical question / caption / label / dialogue length of the source
dataset) and a typical source image size; images are resized by the judge's processor to its
pixel budget (one LM token per 28 x 28 pixels). Lengths and sizes are estimates from the datasets'
descriptions, not measured from the files (no MMEB files here). `pool` is the number of distinct
targets the subset contributes to the global pool: candidates are drawn from it uniformly, so a
candidate image recurs across queries as often as it would in a pool of MMEB-train's size
(hard-negative neighbourhoods would make it recur more: the image cache's gain is a lower bound).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

WORDS = ["image", "photo", "picture", "dog", "cat", "man", "woman", "car", "street", "table", "food", "water", "sky", "tree", "building", "sign", "red", "blue", "green", "white", "black", "small", "large", "left", "right", "top", "bottom", "people", "two", "three", "many", "what", "where", "who", "which", "how", "color", "number", "name", "year", "news", "game", "city", "river", "road", "field", "room", "window", "door", "chart", "value", "total", "percent", "table", "page", "question", "answer", "caption", "document", "screen", "brand", "country", "sport", "animal", "bird", "horse", "boat", "train", "plane", "bus", "bike", "shirt", "hat", "ball", "phone", "book", "bottle", "cup", "plate", "chair", "bed"]  # fmt: skip

QWEN25_VL = {  # public config facts (../shared/reference/model-shapes.md); "smoke" is for the tests only
    "3b": {"hidden": 2048, "heads": 16, "kv_heads": 2, "intermediate": 11008, "vocab": 151936, "layers": 36,
           "tie": True},
    "7b": {"hidden": 3584, "heads": 28, "kv_heads": 4, "intermediate": 18944, "vocab": 152064, "layers": 28,
           "tie": False},
    "smoke": {"hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 4096, "layers": 2, "tie": True},
}  # fmt: skip
VISION = {"depth": 32, "hidden": 1280, "intermediate": 3420, "heads": 16, "patch": 14, "merge": 2, "window": 112}


@dataclass(frozen=True)
class SubsetMix:
    name: str
    queries: int  # rows at the 50K cap
    q_image: tuple[int, int] | None  # typical source image (w, h)
    q_tokens: int  # query text incl. the stored instruction
    t_image: tuple[int, int] | None
    t_tokens: int
    pool: int  # distinct targets in the global pool


MMEB_TRAIN_MIX: tuple[SubsetMix, ...] = (
    SubsetMix("ImageNet_1K", 50_000, (500, 375), 7, None, 2, 1_000),
    SubsetMix("N24News", 49_000, (800, 533), 34, None, 1, 24),
    SubsetMix("HatefulMemes", 8_500, (600, 500), 18, None, 1, 2),
    SubsetMix("VOC2007", 7_800, (500, 375), 7, None, 1, 20),
    SubsetMix("SUN397", 19_900, (600, 450), 7, None, 3, 397),
    SubsetMix("OK-VQA", 9_000, (640, 480), 17, None, 1, 5_000),
    SubsetMix("A-OKVQA", 17_000, (640, 480), 19, None, 2, 8_000),
    SubsetMix("DocVQA", 39_500, (1700, 2200), 21, None, 3, 30_000),
    SubsetMix("InfographicsVQA", 24_000, (1000, 3000), 21, None, 2, 15_000),
    SubsetMix("ChartQA", 28_300, (800, 600), 23, None, 1, 10_000),
    SubsetMix("Visual7W", 50_000, (640, 480), 17, None, 4, 25_000),
    SubsetMix("VisDial", 50_000, None, 135, (640, 480), 5, 50_000),
    SubsetMix("CIRR", 26_000, (600, 400), 25, (600, 400), 5, 16_000),
    SubsetMix("VisualNews_t2i", 50_000, None, 32, (800, 533), 5, 50_000),
    SubsetMix("VisualNews_i2t", 50_000, (800, 533), 10, None, 25, 50_000),
    SubsetMix("MSCOCO_t2i", 50_000, None, 22, (640, 480), 5, 20_000),
    SubsetMix("MSCOCO_i2t", 50_000, (640, 480), 10, None, 12, 50_000),
    SubsetMix("NIGHTS", 16_000, (768, 768), 11, (768, 768), 5, 16_000),
    SubsetMix("WebQA", 17_200, None, 25, (800, 600), 40, 17_200),
    SubsetMix("MSCOCO", 50_000, (640, 480), 15, (160, 140), 9, 50_000),
)


def build_tokenizer():
    from unime_assets.embedded import tokenizer_corpus
    from unime_assets.judging import PAIRWISE_PROMPT
    from unime_assets.models.tiny import build_tokenizer as tiny_tokenizer

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 12)) for _ in range(400)]
    corpus = tokenizer_corpus(texts) + [PAIRWISE_PROMPT, "Query: Candidate:", "You are a helpful assistant."] * 50
    return tiny_tokenizer(corpus, vocab_size=4000)


def build_judge(size: str = "3b", *, layers: int = 2, vision_blocks: int = 2, max_pixels: int = 300 * 28 * 28,
                seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"):  # fmt: skip
    """(model, processor): Qwen2.5-VL at the real widths of `size`, `layers` LM layers, random weights,
    created directly in `dtype` on `device` (a full-depth 7B in bf16 is 16 GB: no float32 copy on the host)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from unime_assets.models.processors import ImageOnlyQwen25VLProcessor
    from unime_assets.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    shape = QWEN25_VL[size]
    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = shape["hidden"] // shape["heads"]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
            num_hidden_layers=layers, num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
            max_position_embeddings=32768, tie_word_embeddings=shape["tie"],
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                             "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_blocks, hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"],
            num_heads=VISION["heads"], out_hidden_size=shape["hidden"], patch_size=VISION["patch"],
            spatial_merge_size=VISION["merge"], temporal_patch_size=2, window_size=VISION["window"],
            fullatt_block_indexes=[vision_blocks - 1],  # the real tower: every 8th block is full attention
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape["tie"],
    )  # fmt: skip
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    processor = ImageOnlyQwen25VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=max_pixels),
        tokenizer=tok, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    return model, processor


class SyntheticImages:
    """Noise images of each subset's size, made on demand from the path (deterministic), kept in memory."""

    def __init__(self) -> None:
        self.sizes: dict[str, tuple[int, int]] = {}
        self._cache: dict[str, Image.Image] = {}

    def add(self, path: str, size: tuple[int, int]) -> str:
        self.sizes[path] = size
        return path

    def __call__(self, path: str) -> Image.Image:
        img = self._cache.get(path)
        if img is None:
            w, h = self.sizes[path]
            seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little")
            arr = np.random.default_rng(seed).integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(arr).resize((w, h), Image.Resampling.NEAREST)  # blocky: cheap to make
            self._cache[path] = img
        return img


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, max(n, 1)))


def make_groups(mix: SubsetMix, n_queries: int, n_cands: int, images: SyntheticImages, seed: int = 0):
    """(query, [positive, *candidates]) groups of one subset, candidates drawn from the subset's pool."""
    from unime_assets.models.encoding import Item

    rng = np.random.default_rng([seed, int.from_bytes(mix.name.encode()[:8], "little")])

    def target(j: int) -> Item:
        t_rng = np.random.default_rng([seed, j, len(mix.name)])  # a pool entry is the same item everywhere
        text = _text(t_rng, mix.t_tokens)
        if mix.t_image is None:
            return Item(text)
        return Item("<|image_1|>\n" + text, images.add(f"{mix.name}/t{j}.png", mix.t_image))

    groups = []
    for i in range(n_queries):
        text = _text(rng, mix.q_tokens)
        if mix.q_image is not None:
            query = Item("<|image_1|>\n" + text, images.add(f"{mix.name}/q{seed}_{i}.png", mix.q_image))
        else:
            query = Item(text)
        # tiny label sets (HatefulMemes: 2) fill up with other targets of the same shape, as the global pool would
        picks = rng.choice(max(mix.pool, n_cands + 1), size=n_cands + 1, replace=False)
        groups.append((query, [target(int(j)) for j in picks]))
    return groups
