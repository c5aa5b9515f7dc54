"""DeepSpeed plumbing shared by every training loop: process group, config, engine, export.

A single process (this one) is rank 0 of a world of 1 unless a launcher (deepspeed/torchrun)
already set RANK/WORLD_SIZE. On CPU the backend is gloo; DeepSpeed's shared-memory comm op is
disabled because it JIT-compiles for ~20 s (gloo is enough for the CPU test ranks), and the
optimizer is torch's AdamW (`torch_adam`) so no fused/cpu Adam op is compiled either.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        return
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    # A single in-process rank gets its own rendezvous address. It is removed again after the init
    # (it is read only there): a child process inheriting it would try to bind the port this
    # process's store holds.
    own_rendezvous = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if torch.cuda.is_available():  # one GPU per rank: the launcher's LOCAL_RANK picks it
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    finally:
        for key in own_rendezvous:
            os.environ.pop(key, None)


def local_device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `t` (same shape on each) along dim 0; this rank's slice keeps its graph.

    all_gather returns detached copies, so the local slot is replaced by `t` itself: the loss over
    the global batch then sends gradient to this rank's representations only (the official
    `dist_gather_tensor`); the loss is multiplied by the world size to undo the ranks' averaging.
    """
    n = world_size()
    if n == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank()] = t
    return torch.cat(parts, dim=0)


def all_reduce_mean(value: float) -> float:
    """Mean of a scalar over ranks (for logging a rank-local loss)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=local_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


LR_SCHEDULES = ("linear", "cosine")


@dataclass
class EngineConfig:
    micro_batch_size: int
    total_steps: int
    lr: float = 1e-4
    warmup_steps: int = 0
    grad_accum: int = 1
    zero_stage: int = 2
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    bf16: bool | None = None  # None: bf16 on CUDA, fp32 on CPU (fp16 is not supported on CPU)
    lr_schedule: str = "linear"  # HF get_scheduler name: "linear" or "cosine", linear warmup from 0

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0:  # longer than total_steps is allowed, as in HF: lr never peaks
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def deepspeed_config(cfg: EngineConfig, backwards_per_micro_batch: int = 1) -> dict:
    """DeepSpeed JSON config. With GradCache a micro-batch runs one backward per chunk; each of them
    is a DeepSpeed micro-step (backward + step), so DeepSpeed accumulates `grad_accum x chunks`
    backwards before the optimizer update (its own accumulation path, valid for ZeRO 0-3).
    The LR schedule is not in here: `lr_scheduler` builds the HF one (see there)."""
    bf16 = torch.cuda.is_available() if cfg.bf16 is None else cfg.bf16
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum * backwards_per_micro_batch,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bf16},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_scheduler(cfg: EngineConfig):
    """The official scripts' schedules, built by transformers exactly as their HF Trainer builds them:
    optimizer step k (0-based) runs at lr x f(k), with f(k) = k / warmup during the warmup (so the
    first step runs at lr 0, as in HF), then linear decay to 0 or a half cosine to 0 at total_steps.
    Returned as a callable for deepspeed.initialize, which steps it at every optimizer step."""
    from transformers import get_scheduler

    def build(optimizer):
        return get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                             num_training_steps=cfg.total_steps)  # fmt: skip

    return build


def initialize(model: torch.nn.Module, cfg: EngineConfig, backwards_per_micro_batch: int = 1):
    import deepspeed

    ensure_distributed()
    params = [p for p in model.parameters() if p.requires_grad]
    config = deepspeed_config(cfg, backwards_per_micro_batch)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config,
                                           lr_scheduler=lr_scheduler(cfg))  # fmt: skip
    return engine


def export_pretrained(engine, out_dir: Path, processor, *, zero_stage: int, lora: bool) -> None:
    """Save HF weights as safetensors (plus the LoRA adapter when training LoRA) on rank 0.

    ZeRO-3 partitions parameters, so they are gathered before reading the state dict.
    """
    import deepspeed

    module = engine.module
    gather = (
        deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        if zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if rank() != 0:  # the other ranks only take part in the ZeRO-3 gather
            return
        if lora:
            adapter_sd = {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if "lora_" in k}
            module.save_pretrained(out_dir / "adapter", state_dict=adapter_sd, safe_serialization=True)
            module = module.merge_and_unload()
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    processor.save_pretrained(out_dir)
