"""Helpers shared by the asset-level tests."""

from __future__ import annotations

from pathlib import Path


def nudge_weights(ckpt: Path, amount: float = 1e-3) -> None:
    """A "trained" copy of a checkpoint: one projection weight moved by `amount` (deterministic, so two
    nudged copies of one checkpoint hold the same weights)."""
    from safetensors.torch import load_file, save_file

    f = next(Path(ckpt).glob("*.safetensors"))
    tensors = load_file(f)
    name = sorted(k for k in tensors if "proj" in k)[0]
    tensors[name] = tensors[name] + amount
    save_file(tensors, f, metadata={"format": "pt"})
