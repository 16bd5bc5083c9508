"""Confusion-matrix and ROC figures as PNG files.

Uses matplotlib's object API with the Agg canvas, never pyplot, so no global figure state or
display backend is touched inside a service process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from tumorlens.evaluation import metrics


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path


def confusion_matrix_png(cm: NDArray[np.int64], labels: Sequence[str], path: Path) -> Path:
    """Counts, with each cell shaded by its row fraction (the per-class recall view)."""
    fig = Figure(figsize=(5.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour)
    ax.set_title("Confusion matrix")
    return _save(fig, path)


def roc_png(
    y_true: NDArray[np.int64], probs: NDArray[np.float64], labels: Sequence[str], path: Path
) -> Path:
    """One-vs-rest ROC curve per class, AUC in the legend."""
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for k, name in enumerate(labels):
        positive = y_true == k
        if not positive.any() or positive.all():
            continue  # ROC undefined without both classes
        fpr, tpr = metrics.roc_curve(probs[:, k], positive)
        auc = metrics.roc_auc(probs[:, k], positive)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right")
    return _save(fig, path)
