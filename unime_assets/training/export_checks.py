"""Whether a trained checkpoint differs from its base at all.

A training whose every optimizer step was skipped or had learning rate 0 writes the base's weights
again, and an evaluation then scores "the trained model" exactly like the untrained base (the
reported "trained 18.41 = base 18.41"). Measured here: with DeepSpeed's WarmupDecayLR (the engine's
schedule) the first two optimizer steps run at lr 0 (the optimizer starts at `warmup_min_lr` = 0 and
the scheduler's first step computes iteration 0, gamma 0), so a training of 1 or 2 steps leaves the
weights bitwise equal to the base's; a skipped (overflowing) step changes nothing either. Compared tensor by tensor, the ones training most often changes first (projections), so a
changed checkpoint is usually told apart after reading one small tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open


def _tensors(path: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it (single file or sharded)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            out.update(dict.fromkeys(fh.keys(), f))
    return out


def _order(name: str) -> tuple[int, str]:
    # LoRA targets and MLP projections change in every training; embeddings and norms may not.
    return (0 if "proj" in name else 1 if "norm" not in name and "embed" not in name else 2, name)


def identical_weights(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when every tensor the two checkpoints share is bitwise equal. Names only one side has are
    not compared: an export writes a tied `lm_head.weight` its base leaves implicit."""
    ta, tb = _tensors(Path(a)), _tensors(Path(b))
    shared = set(ta) & set(tb)
    if not shared:
        return False
    handles: dict[Path, object] = {}
    try:
        for name in sorted(shared, key=_order):
            for f in (ta[name], tb[name]):
                if f not in handles:
                    handles[f] = safe_open(str(f), framework="pt").__enter__()
            x, y = handles[ta[name]].get_tensor(name), handles[tb[name]].get_tensor(name)
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
                return False
        return True
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)
