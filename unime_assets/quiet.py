"""Quiet logs: library messages that are understood and harmless here are dropped where they are emitted,
and progress bars are drawn only on a terminal (a log file gets no carriage-return frames).

`install()` runs first in every process of the project (cli.py, definitions.py, the training launcher).
Warnings and messages that are not listed here stay visible; MLflow's note that the registered models
are pickled with cloudpickle is one of them (models-from-code would avoid the pickle).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# DeepSpeed's own logger ("DeepSpeed", propagate=False, its own handler): messages dropped, and why.
_DEEPSPEED_UNDERSTOOD = (
    # Logged on import when torch sees no CUDA device: DeepSpeed falls back to its CPU accelerator, which is
    # what a CPU run wants. Kept when a GPU is visible (then it would mean a detection problem).
    "Setting accelerator to CPU",
    # WarmupLR/WarmupDecayLR call their own get_lr() inside __init__ (to set the initial lr) before the first
    # step, and warn about it; the lr the loop logs is read after each step.
    "Attempting to get learning rate from scheduler before it has started",
)


# Python warnings raised inside libraries, by message (each filter matches one message only).
_WARNINGS_UNDERSTOOD = (
    # MLflow's log_model without input_example: with one, MLflow would load the checkpoint to check it.
    (r".*An input example was not provided when logging the model", UserWarning),
    # Dagster 1.13's own Pipes context reads a preview property of its message reader on every launch.
    (r"Function `PipesMessageReader.expected_writer_count` is currently in preview", Warning),
)


class _DropUnderstood(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_DEEPSPEED_UNDERSTOOD[0]):
            import torch

            return torch.cuda.is_available()
        return not message.startswith(_DEEPSPEED_UNDERSTOOD[1:])


def install() -> None:
    """Idempotent; before DeepSpeed or huggingface_hub are imported is best, after works too."""
    for message, category in _WARNINGS_UNDERSTOOD:
        warnings.filterwarnings("ignore", message=message, category=category)
    ds = logging.getLogger("DeepSpeed")  # the same object DeepSpeed configures when it is imported
    if not any(isinstance(f, _DropUnderstood) for f in ds.filters):
        ds.addFilter(_DropUnderstood())
    if not sys.stderr.isatty():
        # transformers' "Loading weights" / "Writing model shards" bars follow huggingface_hub's switch,
        # read from the environment when huggingface_hub is imported.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()


def bar_disabled(show: bool) -> bool | None:
    """tqdm's `disable`: None lets tqdm draw only when its stream is a terminal; True never draws."""
    return None if show else True
