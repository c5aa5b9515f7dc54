"""DeepSpeed resume states are read weights-only: a pickle planted in a checkpoint folder is refused
(naming the file) and its code never runs, while real ZeRO states resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unime_assets.training import resume_states
from unime_assets.training.engine import EngineConfig, ensure_distributed, initialize


class Planted:
    """What an attacker writes: unpickling it calls Path.touch(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _engine(stage: int):
    ensure_distributed()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    return initialize(model, EngineConfig(micro_batch_size=2, total_steps=5, zero_stage=stage))


@pytest.mark.parametrize("stage", [0, 2])
def test_real_states_resume_and_planted_code_never_runs(tmp_path, stage):
    engine = _engine(stage)
    engine.backward(engine(torch.randn(2, 4)).sum())
    engine.step()
    ckpt = tmp_path / "checkpoints"
    engine.save_checkpoint(str(ckpt), tag="step00000001", client_state={"step": 1, "history": {"loss": [0.5]}})
    path, state = resume_states.load_checkpoint(_engine(stage), ckpt)
    assert path is not None and state["step"] == 1 and state["history"] == {"loss": [0.5]}

    marker = tmp_path / "code-ran"
    planted = ckpt / "step00000001" / "mp_rank_00_model_states.pt"
    torch.save({"module": Planted(marker)}, planted)
    with pytest.raises(RuntimeError, match=rf"resume state {planted} .*refusing to load it"):
        resume_states.load_checkpoint(_engine(stage), ckpt)
    assert not marker.exists()
    # what DeepSpeed's own loader does with the same folder (the defect this replaces)
    with pytest.raises(Exception):  # noqa: B017  the planted object is not a state dict
        _engine(stage).load_checkpoint(str(ckpt))
    assert marker.exists()
