"""Small matplotlib figures, logged to MLflow (RunHandle.log_figure) and shown from there in Dagster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: assets run in worker processes without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def loss_curve(losses: Sequence[float], title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    return fig


def histograms(series: Mapping[str, np.ndarray], title: str, bins: int = 30, xlabel: str = "score") -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3))
    for label, values in series.items():
        ax.hist(np.asarray(values), bins=bins, range=(0.0, 1.0), alpha=0.55, density=True, label=label)
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend()
    return fig


def scatter_pairs(values: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]], title: str,
                  max_points: int = 20_000, seed: int = 0) -> Figure:  # fmt: skip
    """One panel per (a, b): b's scores against a's on the same entries, diagonal for reference; at
    most `max_points` points per panel (a seeded sample), so a full-size pool stays readable."""
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(3.4 * max(len(pairs), 1), 3.2), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (a, b) in zip(axes[0], pairs, strict=False):
        x, y = np.asarray(values[a]), np.asarray(values[b])
        if len(x) > max_points:
            keep = rng.choice(len(x), max_points, replace=False)
            x, y = x[keep], y[keep]
        ax.scatter(x, y, s=4, alpha=0.3)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set(xlabel=a, ylabel=b, xlim=(0, 1), ylim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def grouped_bars(values: Mapping[str, Mapping[str, float]], title: str) -> Figure:
    """values[model][group] -> bar; one colour per model, groups on the x axis."""
    models = list(values)
    groups = list(next(iter(values.values()))) if values else []
    x = np.arange(len(groups))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(5, len(groups) * 0.9), 3.2))
    for i, model in enumerate(models):
        ax.bar(x + i * width, [values[model].get(g, np.nan) for g in groups], width, label=model)
    ax.set_xticks(x + width * (len(models) - 1) / 2, groups, rotation=30, ha="right")
    ax.set(ylabel="Precision@1 (%)", title=title, ylim=(0, 100))
    ax.legend(fontsize=7)
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
