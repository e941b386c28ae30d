"""Reliability diagrams: accuracy against confidence per bin, one panel per evaluation (a trained
method, plain or adapted at test time, on one target), pooled over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import save_figure


def reliability_figure(panels: list[tuple[str, list[dict[str, float]], float]], stem: Path, title: str) -> list[Path]:
    """Panels (label, bins of training.calibration.reliability_bins, ECE) side by side: bars of
    each bin's accuracy, the gap to its mean confidence shaded, the diagonal of perfect calibration;
    PNG and PDF at `stem`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (label, bins, ece) in zip(axes[0], panels):
        lo = np.array([b["lo"] for b in bins])
        width = np.array([b["hi"] - b["lo"] for b in bins])
        acc = np.array([b["acc"] for b in bins])
        conf = np.array([b["conf"] for b in bins])
        filled = ~np.isnan(acc)
        ax.bar(lo[filled], acc[filled], width=width[filled], align="edge", color="#4575b4", edgecolor="white",
               label="accuracy")
        ax.bar(lo[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
               color="#d73027", alpha=0.35, edgecolor="none", label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{label}\nECE {100 * ece:.2f}%, n = {sum(b['count'] for b in bins)}", fontsize=9)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    written = save_figure(fig, stem)
    plt.close(fig)
    return written
