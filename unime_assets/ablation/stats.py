"""Statistics over seeds: mean ± sample std, and the difference to a baseline paired by seed with a
Student-t 95 % interval (n seeds, n − 1 degrees of freedom; none with a single common seed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for one value)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("mean_std: no values")
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


@dataclass(frozen=True)
class PairedDifference:
    mean: float  # mean over common seeds of (variant - baseline)
    low: float | None  # 95 % t-interval; None with fewer than 2 common seeds
    high: float | None
    seeds: tuple[int, ...]

    def as_text(self, digits: int = 2) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:+.{digits}f} (n={len(self.seeds)})"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_difference(variant: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference | None:  # fmt: skip
    """variant - baseline on the seeds both have; None when they share no seed."""
    seeds = tuple(sorted(set(variant) & set(baseline)))
    if not seeds:
        return None
    d = np.array([variant[s] - baseline[s] for s in seeds], dtype=np.float64)
    if len(d) < 2:
        return PairedDifference(float(d.mean()), None, None, seeds)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return PairedDifference(float(d.mean()), float(d.mean()) - half, float(d.mean()) + half, seeds)
