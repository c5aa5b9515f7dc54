"""Tiny, randomly initialised Qwen2-VL / Qwen2.5-VL / InternVL3 checkpoints built locally (no hub).

The embedded default needs real model classes (same forward, processor, chat template and
`from_pretrained` path as a 2B/7B checkpoint) at a size that trains in seconds on a CPU. The
tokenizer is a byte-level BPE trained on the synthetic corpus plus the judge/reranker prompts,
with the Qwen special tokens, so "Yes"/"No" and "Ans: (i)" are real tokens. InternVL3 (a second
judge family) gets the same BPE plus its own named image tokens and chat template
(`family_tokenizer`; the family facts are in models/families.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from unime_assets.io import atomic_dir
from unime_assets.models.families import get_family
from unime_assets.models.processors import (
    ImageOnlyInternVLProcessor,
    ImageOnlyQwen2VLProcessor,
    ImageOnlyQwen25VLProcessor,
)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# The official Qwen2-VL chat template (Qwen2.5-VL's differs only in video handling).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = 2000, phrases: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (word-level merges, so captions stay compositional) plus `phrases` as atomic tokens.

    The fixed judge/reranker prompts are ~50 words; as single tokens they keep the tiny models'
    sequences short, so the final position's attention is not diluted over a long constant prefix.
    Real checkpoints bring their own tokenizer.
    """
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0..13, never split
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tok.add_tokens(list(phrases))  # non-special: they decode back to their text
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    for word in ("Yes", "No"):
        if len(fast.encode(word, add_special_tokens=False)) != 1:
            raise RuntimeError(f"tiny tokenizer: {word!r} is not a single token; add it to the corpus")
    return fast


def _config(cls, tok, *, hidden: int, layers: int, heads: int, kv_heads: int, vis_embed: int, vis_depth: int):
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = hidden // heads
    text_config = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        # M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                         "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )  # fmt: skip
    if cls is Qwen2VLConfig:
        vision_config = dict(depth=vis_depth, embed_dim=vis_embed, num_heads=4, mlp_ratio=2, hidden_size=hidden,
                             patch_size=14, spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
    else:  # Qwen2.5-VL names its vision fields differently
        vision_config = dict(depth=vis_depth, hidden_size=vis_embed, num_heads=4, intermediate_size=vis_embed * 2,
                             out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                             window_size=56, fullatt_block_indexes=[vis_depth - 1])  # fmt: skip
    return cls(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )  # fmt: skip


def _reinit(model: torch.nn.Module, std: float) -> None:
    """Re-draw linear and embedding weights with a larger std than the usual 0.02.

    At width 128 the default init gives near-uniform attention, and a from-scratch model then needs
    ~5x more steps before it learns to compare a candidate with its query (measured on a Yes/No
    toy task: ~800 steps at 0.02, ~150 at 0.1). Norm weights stay at 1.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)


def build_tiny_checkpoint(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    family: str = "qwen2_vl",
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vis_embed: int = 64,
    vis_depth: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    init_std: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write a random-init checkpoint (safetensors + processor) that `from_pretrained` loads back."""
    if family == "internvl":  # InternVL3: its own tokens, template, vision tower and image processor
        torch.manual_seed(seed)
        config, processor = _internvl_parts(tokenizer, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                                            vis_embed=vis_embed, vis_depth=vis_depth)  # fmt: skip
        return _write_checkpoint(out_dir, InternVLForConditionalGeneration, config, processor, init_std)
    if family == "qwen2_vl":
        cfg_cls, model_cls, proc_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration, ImageOnlyQwen2VLProcessor
    elif family == "qwen2_5_vl":
        cfg_cls, model_cls, proc_cls = (
            Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, ImageOnlyQwen25VLProcessor,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown tiny model family {family!r}")
    torch.manual_seed(seed)
    config = _config(cfg_cls, tokenizer, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                     vis_embed=vis_embed, vis_depth=vis_depth)  # fmt: skip
    processor = proc_cls(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return _write_checkpoint(out_dir, model_cls, config, processor, init_std)


def _write_checkpoint(out_dir: str | Path, model_cls, config, processor, init_std: float) -> Path:
    """Instantiate with weights drawn at `init_std` and save model + processor atomically."""
    config.initializer_range = init_std
    model = model_cls(config)
    _reinit(model, init_std)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out_dir


def family_tokenizer(base: PreTrainedTokenizerFast, family: str) -> PreTrainedTokenizerFast:
    """`base` (the tiny BPE) as the tokenizer of a `family` checkpoint: a copy with the family's named
    special tokens (InternVL's <img>, </img>, <IMG_CONTEXT>, <video>) and its chat template. Same
    words, same ids for them; the added tokens get new ids, so per-tokenizer lookups are exercised."""
    fam = get_family(family)
    if not fam.special_tokens and fam.chat_template is None:
        return base
    named = dict(fam.special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(base.backend_tokenizer.to_str()),
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        extra_special_tokens=[*base.extra_special_tokens, *named.values()],
        model_specific_special_tokens=named,
        padding_side="left",
        chat_template=fam.chat_template or CHAT_TEMPLATE,
    )


def _internvl_parts(base_tokenizer: PreTrainedTokenizerFast, *, hidden: int, layers: int, heads: int,
                    kv_heads: int, vis_embed: int, vis_depth: int, tile: int = 56, max_tiles: int = 2):  # fmt: skip
    """Config and processor of a tiny InternVL3-architecture checkpoint (InternViT-style tower,
    pixel-shuffle MLP projector, Qwen2 language model; transformers-native) with the GotOcr2 PIL
    image processor. Images are cut into at most `max_tiles` tiles of `tile` pixels plus a thumbnail,
    as InternVL3 does at 448; a tile is (tile/14)^2 / 4 = 4 image tokens, the tiny Qwen's order of size.
    """
    tok = family_tokenizer(base_tokenizer, "internvl")
    patch = 14
    text_config = dict(
        model_type="qwen2", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    vision_config = dict(hidden_size=vis_embed, num_hidden_layers=vis_depth, num_attention_heads=4,
                         intermediate_size=vis_embed * 2, image_size=[tile, tile], patch_size=[patch, patch])  # fmt: skip
    config = InternVLConfig(text_config=text_config, vision_config=vision_config, downsample_ratio=0.5,
                            image_token_id=tok.context_image_token_id, tie_word_embeddings=True)  # fmt: skip
    image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_tiles)  # fmt: skip
    processor = ImageOnlyInternVLProcessor(image_processor=image_processor, tokenizer=tok,
                                           image_seq_length=(tile // patch) ** 2 // 4,
                                           chat_template=tok.chat_template)  # fmt: skip
    return config, processor
