"""Matplotlib figures of the evaluate stage: confusion matrix and per-video timelines."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def close(fig: plt.Figure) -> None:
    """Free a figure once it is logged."""
    plt.close(fig)


def confusion_figure(cm: np.ndarray, labels: list[str], title: str = "") -> plt.Figure:
    cm = np.asarray(cm)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * n, 1.0 + 0.35 * n), dpi=100)
    rows = cm.sum(axis=1, keepdims=True)
    ax.imshow(np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0), cmap="Blues",
              vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(n), labels, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalized colour, counts)", fontsize=8)
    fig.tight_layout()
    return fig


def timeline_figure(pred: np.ndarray, true: np.ndarray, labels: list[str], title: str) -> plt.Figure:
    """Two rows of T segments (truth, prediction); colour = class, grey = background."""
    pred, true = np.asarray(pred), np.asarray(true)
    bg = len(labels) - 1
    cmap = plt.get_cmap("tab20")
    colours = [(0.85, 0.85, 0.85, 1.0) if c == bg else cmap(c % 20) for c in range(len(labels))]
    fig, ax = plt.subplots(figsize=(6, 1.4), dpi=100)
    for row, seq in enumerate((true, pred)):
        for t, c in enumerate(seq):
            ax.add_patch(plt.Rectangle((t, 1 - row), 1, 0.9, color=colours[int(c)]))
            ax.text(t + 0.5, 1.45 - row, labels[int(c)][:6], ha="center", va="center", fontsize=5)
    ax.set_xlim(0, len(true))
    ax.set_ylim(0, 2)
    ax.set_yticks([0.45, 1.45], ["pred", "truth"], fontsize=7)
    ax.set_xticks(range(len(true) + 1))
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("segment (s)", fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
