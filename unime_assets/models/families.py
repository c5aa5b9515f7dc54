"""Model families: everything that differs between the MLLM architectures, in one place.

A checkpoint's family is the `model_type` of its config.json; every family loads through
transformers' generic `AutoModelForImageTextToText` and a torchvision-free processor
(models/processors.py). The judge's prompt is family-neutral (a chat message list rendered by the
checkpoint's own chat template, Yes/No ids looked up in its own tokenizer); what differs is here:

- `image_token`: the placeholder the processor expands into image tokens;
- `prefix_shared`: whether the prefix-shared judge engine applies. It reproduces Qwen-VL's M-RoPE
  positions, so other families are judged by the plain batched engine (`judging.plain`), which gives
  the same numbers without sharing the query prefix;
- `chat_template` and `special_tokens`: what a tiny checkpoint built here (models/tiny.py) needs to
  look like the real one. Real checkpoints bring their own template and tokenizer.

Supported: Qwen2-VL, Qwen2.5-VL (the paper's judge) and InternVL3 in its transformers-native form
(`InternVLForConditionalGeneration`, the `-hf` checkpoints; the paper's Table 5 judges InternVL3-8B
and -14B). LLaVA-OneVision is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from unime_assets.models.processors import IMAGE_TOKEN, PROCESSORS, model_type


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json `model_type`
    label: str
    prefix_shared: bool
    chat_template: str | None = None  # tiny builds; None: the official Qwen2-VL template (models/tiny.py)
    special_tokens: Mapping[str, str] = field(default_factory=dict)  # named tokenizer tokens the processor reads

    @property
    def image_token(self) -> str:
        return IMAGE_TOKEN[self.model_type]

    @property
    def processor_class(self) -> type:
        return PROCESSORS[self.model_type]


# InternVL3-hf's layout (transformers' conversion of the InternVL3 checkpoints): ChatML turns, no
# default system turn, an image part written as the context placeholder and a newline; the
# processor expands it to <img> + N x <IMG_CONTEXT> + </img> per image tile.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'video' %}<video>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family("qwen2_vl", "Qwen2-VL", prefix_shared=True),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2.5-VL", prefix_shared=True),
    "internvl": Family(
        "internvl", "InternVL3", prefix_shared=False, chat_template=INTERNVL_CHAT_TEMPLATE,
        special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    ),  # fmt: skip
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(path: str | Path) -> Family:
    """The family of a local checkpoint, from its config.json (the error names the file)."""
    return get_family(model_type(path))
