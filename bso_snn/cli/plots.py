"""The run folder's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_acc(history: list[dict], path: Path | BinaryIO, title: str) -> None:
    """Training loss (left) and train/test accuracy (right) per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-")
    ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train (during updates)")
    ax_acc.plot(epochs, [h["test_acc"] for h in history], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_flip_rate(trace: list[dict], path: Path | BinaryIO, title: str) -> None:
    """Fraction of each binary layer's weights flipped per optimizer step, over training (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if trace:
        x = [p["epoch"] for p in trace]
        for name in trace[0]["rate"]:
            # a zero rate cannot be drawn on a log axis: it is shown as a gap
            ax.plot(x, [p["rate"][name] or float("nan") for p in trace], ".-", label=name)
        ax.set_yscale("log")
        ax.legend(title="binary weight")
    else:
        ax.text(0.5, 0.5, "no binary weights (full-precision baseline)", ha="center", va="center")
    ax.set(xlabel="epoch", ylabel="flips per weight per optimizer step", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
