"""GradCache (Gao et al. 2021), as the official UniME-V2 trainer uses it (`gc_q/p_chunk_size=2`).

The batch loss needs every representation at once, but activations are only needed per sequence.
So: (1) representations are computed in chunks without a graph; (2) the loss and its gradient
with respect to the representations are computed on the full batch; (3) each chunk is encoded
again with a graph and back-propagated with `(reps * cached_grad).sum()`. Parameter gradients
equal the plain full-batch computation while peak activation memory is one chunk's.

Each chunk's RNG state is recorded before step (1) and replayed in step (3), so dropout (LoRA
dropout 0.1) draws the same masks in both passes.

The encoder is a callable `encode(group, start, stop) -> (stop - start, D)`; groups are e.g.
queries and candidates. `backward(tensor)` is the engine's backward (DeepSpeed counts each call
as a micro-step; `backward_count` tells the engine how many there are per batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

Encode = Callable[[int, int, int], torch.Tensor]
LossFn = Callable[[list[torch.Tensor]], torch.Tensor]
Backward = Callable[[torch.Tensor], None]


def chunks(sizes: Sequence[int], chunk_size: int) -> list[tuple[int, int, int]]:
    """(group, start, stop) for every chunk of every group, in encoding order."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(g, s, min(s + chunk_size, n)) for g, n in enumerate(sizes) for s in range(0, n, chunk_size)]


def backward_count(sizes: Sequence[int], chunk_size: int) -> int:
    """Backward calls per batch: one per chunk with GradCache (chunk_size > 0), else one."""
    return len(chunks(sizes, chunk_size)) if chunk_size > 0 else 1


class RngState:
    """The CPU (and, when initialised, CUDA) generator state at construction; `replay()` runs a
    block from that state without moving the global generators (like torch.utils.checkpoint)."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def full_batch_step(
    encode: Encode, sizes: Sequence[int], loss_fn: LossFn, backward: Backward, scale: float = 1.0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The plain computation: every group encoded with a graph, one backward of `scale * loss`."""
    reps = [encode(g, 0, n) for g, n in enumerate(sizes)]
    loss = loss_fn(reps)
    backward(loss * scale)
    return loss.detach(), [r.detach() for r in reps]


def gradcache_step(
    encode: Encode,
    sizes: Sequence[int],
    chunk_size: int,
    loss_fn: LossFn,
    backward: Backward,
    scale: float = 1.0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Same gradients as `full_batch_step`, with one chunk's activations alive at a time.

    Returns the (unscaled) loss and the representations, both detached.
    """
    plan = chunks(sizes, chunk_size)
    states: list[RngState] = []
    parts: list[list[torch.Tensor]] = [[] for _ in sizes]
    with torch.no_grad():
        for g, start, stop in plan:
            states.append(RngState())
            parts[g].append(encode(g, start, stop))
    leaves = [torch.cat(p).detach().requires_grad_() for p in parts]
    loss = loss_fn(leaves)
    grads = torch.autograd.grad(loss * scale, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads, strict=True)]
    for (g, start, stop), state in zip(plan, states, strict=True):
        with state.replay():
            rep = encode(g, start, stop)
        # d/dθ of <rep, dL/drep> is the chunk's share of dL/dθ.
        backward(torch.dot(rep.flatten(), grads[g][start:stop].flatten().to(rep.dtype)))
    return loss.detach(), [x.detach() for x in leaves]
