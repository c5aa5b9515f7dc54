"""Load a local checkpoint (tiny or real) the same way, on the best available device.

`trust_remote_code` (a checkpoint's own Python code run by transformers) is decided in one place:
the settings name the trusted sources (`ModelSource.trust_remote_code`), `trust_remote_code_for`
records them and the checkpoints derived from them, and every loader here asks
`remote_code_allowed(path)`. Nothing is trusted unless configured.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
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

_REMOTE_CODE: tuple[Path, ...] = ()


def trust_remote_code_for(paths: Iterable[str | os.PathLike]) -> None:
    """The checkpoints (and folders of checkpoints) whose own code may run; replaces the previous list."""
    global _REMOTE_CODE
    _REMOTE_CODE = tuple(Path(p).expanduser().resolve() for p in paths)


def remote_code_allowed(path: str | os.PathLike) -> bool:
    p = Path(path).expanduser().resolve()
    return any(p == root or p.is_relative_to(root) for root in _REMOTE_CODE)


def check_checkpoint_dir(path: str | os.PathLike | None, role: str) -> Path:
    """Fail early with the role in the message: a typo in a config path is the common error."""
    if not path:
        raise ValueError(f"no model path configured for {role!r}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"model path for {role!r} does not exist or is not a directory: {p}")
    model_type(p)  # raises with the file name when config.json is missing or unsupported
    return p


def check_weights(path: str | os.PathLike) -> list[Path]:
    """The checkpoint's safetensors files, each header read (names, shapes, offsets; no tensor data).

    Raises naming the file: no weights, a sharded index naming a missing shard, a cut or corrupt header.
    """
    p = Path(path)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted({p / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (ValueError, KeyError) as e:
            raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    else:
        shards = sorted(p.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{p}: no *.safetensors weights (only safetensors checkpoints are read)")
    for f in shards:
        _read_safetensors_header(f)
    return shards


def _read_safetensors_header(f: Path) -> dict:
    # Format: 8-byte little-endian header length, a JSON header, then the tensor bytes it indexes.
    if not f.is_file():
        raise FileNotFoundError(f"{f}: weight file missing")
    size = f.stat().st_size
    with open(f, "rb") as fh:
        raw = fh.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < n <= min(size - 8, 100 * 2**20):
            raise ValueError(f"{f}: not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            raise ValueError(f"{f}: corrupt safetensors header ({e})") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{f}: truncated: the header indexes {8 + n + end} bytes, the file has {size}")
    return header


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
    trust_remote_code: bool | None = None,
    train: bool = False,
) -> LoadedModel:
    """`trust_remote_code=None` (the default everywhere): as configured (`remote_code_allowed`)."""
    p = check_checkpoint_dir(path, role)
    device = device or pick_device()
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    trust = remote_code_allowed(p) if trust_remote_code is None else trust_remote_code
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            str(p), dtype=dtype or default_dtype(device), trust_remote_code=trust
        )
    except Exception as e:  # safetensors / transformers errors rarely say which checkpoint
        raise RuntimeError(f"cannot load the {role} checkpoint {p}: {type(e).__name__}: {e}") from e
    model.to(device)
    model.train(train)
    return LoadedModel(model=model, processor=load_processor(p), model_type=model_type(p), path=p)
