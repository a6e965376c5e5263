"""Plots, drawn with matplotlib when the ``plot`` extra is installed (imported lazily).

Each function returns the written path, or ``None`` when matplotlib is not available, so callers
can say "install tinydancer[plot] for plots" instead of failing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from ._io import atomic_write_bytes


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_training_curve(metrics: Sequence[Any], path: str | Path, title: str = "FastGRNN training") -> Path | None:
    """Loss and accuracy per epoch, train and validation."""
    plt = _pyplot()
    if plt is None or not metrics:
        return None
    epochs = [m.epoch + 1 for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [m.train_loss for m in metrics], label="train")
    ax_loss.plot(epochs, [m.val_loss for m in metrics], label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [m.train_accuracy for m in metrics], label="train")
    ax_acc.plot(epochs, [m.val_accuracy for m in metrics], label="validation")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    return _save(fig, plt, path)


def plot_lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    hlines: dict[str, float] | None = None,
    points: dict[str, tuple[float, float]] | None = None,
    logx: bool = False,
) -> Path | None:
    """Several named (x, y) curves, optional horizontal reference lines and single points."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=".", label=name)
    for name, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color="grey")
        ax.annotate(name, (ax.get_xlim()[0], y), fontsize=8, va="bottom")
    for name, (x, y) in (points or {}).items():
        ax.scatter([x], [y], marker="x")
        ax.annotate(name, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def plot_size_quality(panels: dict[str, tuple[str, list[tuple[str, int, float]]]], path: str | Path) -> Path | None:
    """One panel per task: each variant a labelled point at (size in bytes, log scale; quality)."""
    plt = _pyplot()
    if plt is None or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (title, (ylabel, points)) in zip(axes[0], panels.items()):
        for i, (name, size, quality) in enumerate(sorted(points, key=lambda p: p[1])):
            ax.scatter([size], [quality], s=40)
            ax.annotate(name, (size, quality), fontsize=8, xytext=(4, 8 if i % 2 else -12), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("size_bytes (EdgeML accounting, log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.3, hi * 2.5)  # room for the labels
    fig.tight_layout()
    return _save(fig, plt, path)
