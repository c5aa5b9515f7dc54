"""Load a local checkpoint (tiny or real) the same way, on the best available device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from unime_assets.models.processors import IMAGE_TOKEN, load_processor, model_type


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU as in the paper; fp32 on CPU (fp16 is unsupported there and bf16 is slow).
    return torch.bfloat16 if device.type == "cuda" else torch.float32


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A configured dtype name; "auto" is `default_dtype` of the device."""
    if name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[name]


def check_checkpoint_dir(path: str | os.PathLike | None, role: str) -> Path:
    """Fail early with the role in the message: a typo in a config path is the common error."""
    if not path:
        raise ValueError(f"no model path configured for {role!r}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"model path for {role!r} does not exist or is not a directory: {p}")
    model_type(p)  # raises with the file name when config.json is missing or unsupported
    return p


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    model_type: str
    path: Path

    @property
    def image_token(self) -> str:
        return IMAGE_TOKEN[self.model_type]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_model(
    path: str | os.PathLike,
    *,
    role: str = "model",
    device: torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    train: bool = False,
) -> LoadedModel:
    p = check_checkpoint_dir(path, role)
    device = device or pick_device()
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    model = AutoModelForImageTextToText.from_pretrained(
        str(p), dtype=dtype or default_dtype(device), trust_remote_code=trust_remote_code
    )
    model.to(device)
    model.train(train)
    return LoadedModel(model=model, processor=load_processor(p), model_type=model_type(p), path=p)
