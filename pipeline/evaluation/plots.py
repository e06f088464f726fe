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


def timeline_figure(pred: np.ndarray, true: np.ndarray | None, labels: list[str],
                    title: str) -> plt.Figure:
    """Rows of T segments (truth when given, prediction); colour = class, grey = background."""
    pred = np.asarray(pred)
    rows = [("pred", pred)] if true is None else [("truth", np.asarray(true)), ("pred", pred)]
    bg = len(labels) - 1
    cmap = plt.get_cmap("tab20")
    colours = [(0.85, 0.85, 0.85, 1.0) if c == bg else cmap(c % 20) for c in range(len(labels))]
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(pred)), 0.9 + 0.5 * len(rows)), dpi=100)
    for row, (_, seq) in enumerate(rows):
        y = len(rows) - 1 - row
        for t, c in enumerate(seq):
            ax.add_patch(plt.Rectangle((t, y), 1, 0.9, color=colours[int(c)]))
            ax.text(t + 0.5, y + 0.45, labels[int(c)][:6], ha="center", va="center", fontsize=5)
    ax.set_xlim(0, len(pred))
    ax.set_ylim(0, len(rows))
    ax.set_yticks([len(rows) - 1 - r + 0.45 for r in range(len(rows))], [n for n, _ in rows], fontsize=7)
    ax.set_xticks(range(len(pred) + 1))
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("segment (s)", fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
