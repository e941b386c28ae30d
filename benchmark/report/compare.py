"""`benchmark compare A B`: is method A better than B, on the cells both have?

A cell is one (source, target, seed): both methods trained on the same source with the same seed
and tested on the same target, so their difference is paired. Cells are split into in-domain
(target = source) and unseen (target != source). For each group: the mean difference A - B with a
bootstrap 95% interval (scipy.stats.bootstrap over cells, seeded), the Wilcoxon signed-rank
p-value (scipy.stats.wilcoxon, two-sided), and the probability of improvement, the share of
cells where A beats B (ties count half), with its bootstrap interval. Cells of one target share a
trained model across targets, so the cells are not independent: the intervals are a guide, the
per-cell table is the evidence. Per (source, target) the table gives both means over seeds and
the paired difference with its 95% t-interval over seeds; a difference whose interval excludes 0
is marked as outside the seed noise. A cell one method lacks is named, never imputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.errors import BenchmarkError
from .figures import save_figure, t_half_width
from ..core.sources import seen, seen_mask

BOOTSTRAP_SEED = 0  # the bootstrap's resampling is seeded: the same results give the same intervals
BOOTSTRAP_RESAMPLES = 9999


@dataclass
class GroupSummary:
    group: str  # "in-domain" or "unseen"
    cells: int
    mean_diff: float
    diff_ci: tuple[float, float] | None
    wilcoxon_p: float | None
    p_improvement: float
    p_improvement_ci: tuple[float, float] | None


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    cells: pd.DataFrame  # source, target, seed, a, b, diff
    missing: list[str]  # "method on source -> target (seed s)" present for one method only
    groups: list[GroupSummary]
    per_cell: pd.DataFrame  # source, target, n, a_mean, b_mean, diff, half_width, outside_noise


def paired_cells(results: pd.DataFrame, a: str, b: str, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """The (source, target, seed) cells both methods have, and the ones only one has."""
    frame = results[results["metric"] == metric]
    keys = ["source", "target", "seed"]
    left = frame[frame["method"] == a].groupby(keys)["value"].mean().rename("a")
    right = frame[frame["method"] == b].groupby(keys)["value"].mean().rename("b")
    if left.empty or right.empty:
        absent = [m for m, part in ((a, left), (b, right)) if part.empty]
        raise BenchmarkError(f"no FINISHED results of {' and '.join(absent)} for metric {metric}")
    both = pd.concat([left, right], axis=1)
    missing = [f"{b if np.isnan(row.b) else a} has no {src} → {tgt} (seed {seed})"
               for (src, tgt, seed), row in both.iterrows() if np.isnan(row.a) or np.isnan(row.b)]
    cells = both.dropna().reset_index()
    cells["diff"] = cells["a"] - cells["b"]
    return cells, missing


def _improvement(diffs: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean((diffs > 0) + 0.5 * (diffs == 0), axis=axis)


def _bootstrap(diffs: np.ndarray, statistic) -> tuple[float, float] | None:
    from scipy import stats

    if len(diffs) < 2 or np.all(diffs == diffs[0]):
        return None if len(diffs) < 2 else (float(statistic(diffs)), float(statistic(diffs)))
    res = stats.bootstrap((diffs,), statistic, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                          method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise(group: str, diffs: np.ndarray) -> GroupSummary:
    from scipy import stats

    p = None
    if len(diffs) and np.any(diffs != 0):
        p = float(stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    elif len(diffs):
        p = 1.0  # no difference anywhere
    return GroupSummary(group, len(diffs), float(np.mean(diffs)) if len(diffs) else float("nan"),
                        _bootstrap(diffs, lambda x, axis=-1: np.mean(x, axis=axis)), p,
                        float(_improvement(diffs)) if len(diffs) else float("nan"), _bootstrap(diffs, _improvement))


def per_cell(cells: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (source, target), group in cells.groupby(["source", "target"], sort=False):
        n = len(group)
        half = t_half_width(group["diff"].std(ddof=1), n)
        diff = float(group["diff"].mean())
        rows.append({"source": source, "target": target, "n": n, "a_mean": float(group["a"].mean()),
                     "b_mean": float(group["b"].mean()), "diff": diff, "half_width": half,
                     "outside_noise": None if half is None else bool(abs(diff) > half)})
    return pd.DataFrame(rows)


def compare(results: pd.DataFrame, a: str, b: str, metric: str = "acc", order: list[str] | None = None) -> Comparison:
    """The comparison of A and B; per-cell rows by source in `order` (then by name), each
    source's own test set first, then the other targets in `order`."""
    if a == b:
        raise BenchmarkError(f"compare {a} with another method, not with itself")
    cells, missing = paired_cells(results, a, b, metric)
    if cells.empty:
        raise BenchmarkError(f"{a} and {b} share no (source, target, seed) cell: nothing to compare")
    domain = seen_mask(cells)  # the target is (one of) the source's datasets
    groups = [summarise("in-domain", cells.loc[domain, "diff"].to_numpy()),
              summarise("unseen", cells.loc[~domain, "diff"].to_numpy())]
    rank = {name: k for k, name in enumerate(order or [])}
    key = lambda name: (rank.get(name, len(rank)), name)  # noqa: E731
    cells = cells.assign(_s=cells["source"].map(key), _t=[(not seen(s, t), key(t)) for s, t in zip(cells["source"], cells["target"])])
    cells = cells.sort_values(["_s", "_t", "seed"], kind="stable").drop(columns=["_s", "_t"]).reset_index(drop=True)
    return Comparison(a, b, metric, cells, missing, [g for g in groups if g.cells], per_cell(cells))


def _pct(x: float | None, signed: bool = True) -> str:
    if x is None or np.isnan(x):
        return "–"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _interval(ci: tuple[float, float] | None, scale: float = 100, signed: bool = True) -> str:
    if ci is None:
        return "–"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(scale * ci[0])}, {fmt.format(scale * ci[1])}]"


def render(comparison: Comparison, selection_label: str, display=lambda name: name) -> str:
    """The comparison as markdown: the summary per group, the per-cell table, the missing cells."""
    from tabulate import tabulate

    c = comparison
    seeds = int(c.cells.groupby(["source", "target"]).size().max())
    out = [f"**{c.a} vs {c.b}: {c.metric} (%), {selection_label}, paired over (source, target, seed) cells, "
           f"{seeds} seed{'s' if seeds > 1 else ''} per cell**", ""]
    rows = [[g.group, g.cells, _pct(g.mean_diff), _interval(g.diff_ci),
             "–" if g.wilcoxon_p is None else f"{g.wilcoxon_p:.3g}",
             f"{g.p_improvement:.2f}", _interval(g.p_improvement_ci, scale=1, signed=False)] for g in c.groups]
    out.append(tabulate(rows, headers=["targets", "cells", f"mean {c.a} − {c.b}", "95% CI (bootstrap)",
                                       "Wilcoxon p", f"P({c.a} > {c.b})", "95% CI"],
                        tablefmt="github", disable_numparse=True))
    out += ["", f"Per cell (mean over seeds; Δ = {c.a} − {c.b} ± 95% t-interval over seeds; "
            "* = outside the seed noise):", ""]
    cell_rows = []
    for r in c.per_cell.itertuples():
        diff = _pct(r.diff) + ("" if r.half_width is None else f" ± {100 * r.half_width:.2f}")
        mark = "" if r.outside_noise is None else ("*" if r.outside_noise else "")
        cell_rows.append([f"{display(r.source)} → {display(r.target)}", r.n, _pct(r.a_mean, False),
                          _pct(r.b_mean, False), diff + mark])
    out.append(tabulate(cell_rows, headers=["cell", "seeds", c.a, c.b, "Δ"], tablefmt="github",
                        disable_numparse=True))
    if seeds < 2:
        out += ["", "One seed per cell: no seed noise to compare a difference with."]
    if c.missing:
        out += ["", f"Left out ({len(c.missing)} cell(s) one method lacks, never imputed): " + "; ".join(c.missing)]
    return "\n".join(out) + "\n"


def figure(comparison: Comparison, selection_label: str, path_stem, display=lambda name: name) -> list:
    """Per-cell differences with their intervals over seeds, as PNG and PDF beside each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = comparison
    cells = c.per_cell
    labels = [f"{display(s)} → {display(t)}" for s, t in zip(cells["source"], cells["target"])]
    errors = [0.0 if h is None or np.isnan(h) else 100 * h for h in cells["half_width"]]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * len(cells) + 1.5)))
    colours = ["#1b7837" if d > 0 else "#762a83" for d in cells["diff"]]
    y = np.arange(len(cells))
    ax.errorbar(100 * cells["diff"], y, xerr=errors, fmt="none", ecolor="0.4", capsize=3)
    ax.scatter(100 * cells["diff"], y, c=colours, zorder=3)
    ax.axvline(0, color="0.2", linewidth=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{c.a} − {c.b}, {c.metric} (percentage points)")
    ax.set_title(f"{c.a} vs {c.b} per cell, {selection_label}\n(bars: 95% t-interval over seeds)")
    fig.tight_layout()
    written = save_figure(fig, path_stem)
    plt.close(fig)
    return written
