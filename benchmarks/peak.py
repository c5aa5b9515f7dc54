"""The machine's dense-matmul peak, measured in the same run as a benchmark, and FLOP/s as a fraction of it.

"How far from the hardware limit" needs a limit measured on the same machine, threads and moment
(a shared machine's peak moves with its load): a few large square-ish GEMMs, best of `reps`,
in wall time and in process CPU time (per CPU-second, what one fully used core achieves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Peak:
    dtype: str
    device: str
    threads: int
    flops_per_s: float  # wall clock
    flops_per_cpu_s: float  # per process CPU-second (CPU only; equals flops_per_s on a GPU)

    def fraction(self, flops: float, seconds: float, cpu_seconds: float | None = None) -> tuple[float, float | None]:
        """(achieved / peak in wall time, achieved / peak per CPU-second)."""
        wall = flops / max(seconds, 1e-12) / self.flops_per_s
        cpu = None if cpu_seconds is None else flops / max(cpu_seconds, 1e-12) / self.flops_per_cpu_s
        return wall, cpu

    def describe(self) -> str:
        if self.device == "cpu":
            return (f"{self.dtype} matmul peak on {self.threads} CPU threads: {self.flops_per_s / 1e9:.0f} GFLOP/s "
                    f"wall, {self.flops_per_cpu_s / 1e9:.0f} GFLOP per CPU-second")  # fmt: skip
        return f"{self.dtype} matmul peak on {self.device}: {self.flops_per_s / 1e12:.1f} TFLOP/s"


def measure_peak(dtype: torch.dtype = torch.float32, device: str = "cpu", *, size: int = 2048, k: int = 3584,
                 reps: int = 3) -> Peak:  # fmt: skip
    """Best of `reps` (size x k) @ (k x 2*size) products."""
    a = torch.randn(size, k, device=device).to(dtype)
    b = torch.randn(k, 2 * size, device=device).to(dtype)
    flops = 2.0 * size * k * 2 * size
    a @ b  # warm-up: kernel selection, page faults
    best_w = best_c = float("inf")
    for _ in range(reps):
        if device != "cpu":
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best_w, best_c = min(best_w, time.perf_counter() - w), min(best_c, time.process_time() - c)
    per_cpu = flops / best_c if device == "cpu" else flops / best_w
    name = str(dtype).removeprefix("torch.")
    return Peak(name, device, torch.get_num_threads(), flops / best_w, per_cpu)
