"""DeepSpeed resume states read without running code from them.

DeepSpeed writes its resume states with `torch.save` (pickles) and reads them back with
`torch.load` allowing any pickled object: a file planted in a checkpoint folder would run code in every rank.
Here the engine's checkpoint engine is replaced, for loading, by one that reads with
`weights_only=True`: tensors, containers and numbers only, plus the three plain DeepSpeed record types
its optimizer states hold (allowlisted by name; a pickle naming any other global is refused with the
file and the global in the message). Writing is unchanged (the same files, loadable by DeepSpeed).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch


def state_globals() -> list:
    """The non-tensor types a DeepSpeed ZeRO optimizer state pickles (data records, no behaviour)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | os.PathLike, map_location=None):
    """`torch.load(weights_only=True)` with the DeepSpeed records allowed; the error names the file."""
    try:
        with torch.serialization.safe_globals(state_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError and friends: say which file, and that nothing was run
        raise RuntimeError(f"resume state {path} holds more than tensors and plain DeepSpeed records; "
                           f"refusing to load it (nothing in it was run): {type(e).__name__}: "
                           f"{str(e).splitlines()[0]} -- delete {Path(path).parent.parent} to start over") from None  # fmt: skip


def _safe_engine_class():
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_load(path, map_location=map_location)

    return SafeTorchCheckpointEngine


@contextlib.contextmanager
def _no_unsafe_torch_load():
    """Any other `torch.load` DeepSpeed makes while resuming must also be weights-only."""
    original = torch.load

    def guarded(f, *args, weights_only=None, **kwargs):
        return safe_load(f, kwargs.get("map_location")) if not weights_only else original(f, *args, weights_only=True, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = original


def load_checkpoint(engine, ckpt_dir: str | os.PathLike):
    """`engine.load_checkpoint(ckpt_dir)` with every state file read weights-only."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = _safe_engine_class()(None)
    try:
        with _no_unsafe_torch_load():
            return engine.load_checkpoint(str(ckpt_dir))
    finally:
        engine.checkpoint_engine = original
