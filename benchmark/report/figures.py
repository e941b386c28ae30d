"""What every table, comparison and sweep output shares: the 95% t-interval over seeds, and
figures saved as a 200-dpi PNG with a vector PDF beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 200


def t_half_width(std: float | None, n: int) -> float | None:
    """Half-width of the 95% t-interval of a mean of `n` values with sample std `std` (None with
    fewer than two values: no spread to show)."""
    if std is None or n < 2 or np.isnan(std):
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def save_figure(fig, stem: Path) -> list[Path]:
    """`stem`.png at DPI and `stem`.pdf beside it; not with_suffix: a stem may hold a dot
    (synth5.film)."""
    paths = [stem.parent / (stem.name + suffix) for suffix in (".png", ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths
