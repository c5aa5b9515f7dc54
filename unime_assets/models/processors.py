"""Qwen2-VL / Qwen2.5-VL / InternVL processors that work without torchvision.

transformers 5.x type-checks the processor's video slot against a torchvision-backed class, so
`Qwen2VLProcessor(...)` raises and `AutoProcessor` silently returns only the tokenizer when
torchvision is unusable (it is, beside torch 2.13 CPU). Images only are needed here, so these
subclasses drop the video argument; ProcessorMixin derives its sub-processors from `__init__`.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import InternVLProcessor, Qwen2_5_VLProcessor, Qwen2VLProcessor


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """InternVL (InternVL3 `-hf` checkpoints, transformers-native): its image processor has a PIL
    variant (`GotOcr2ImageProcessorPil`), only the video slot needs torchvision."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                 **kwargs):  # fmt: skip
        super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                         chat_template=chat_template, **kwargs)  # fmt: skip


# Per config.json `model_type`; what else differs between families is in models/families.py.
PROCESSORS = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen25VLProcessor,
              "internvl": ImageOnlyInternVLProcessor}  # fmt: skip
IMAGE_TOKEN = {"qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "internvl": "<IMG_CONTEXT>"}


def checkpoint_config(path: str | Path) -> dict:
    """The checkpoint's config.json as a dict (the error names the directory when it is missing)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg} not found: {path} is not a Hugging Face checkpoint directory")
    return json.loads(cfg.read_text())


def text_config(path: str | Path) -> dict:
    """The language model's part of the config (Qwen VL configs nest it under `text_config`)."""
    cfg = checkpoint_config(path)
    return {**cfg, **cfg.get("text_config", {})}


def model_type(path: str | Path) -> str:
    mtype = checkpoint_config(path).get("model_type", "")
    if mtype not in PROCESSORS:
        raise ValueError(f"{Path(path) / 'config.json'}: model_type {mtype!r} is not supported; "
                         f"expected one of {sorted(PROCESSORS)}")  # fmt: skip
    return mtype


def load_processor(path: str | Path, *, padding_side: str = "left", **kwargs):
    """Processor of a local checkpoint. Left padding keeps the last real token at position -1."""
    proc = PROCESSORS[model_type(path)].from_pretrained(str(path), **kwargs)
    proc.tokenizer.padding_side = padding_side
    return proc
