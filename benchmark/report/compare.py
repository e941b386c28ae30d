"""`benchmark compare A B`: is method A better than B, on the cells both have, and how sure is that?

A cell is one (source, target, seed): both methods trained on the same source with the same seed
and tested on the same target, so their difference is paired. The independent unit is not the
cell but the **pair of trained models** sharing (source, seed): the targets of one unit are
measurements of the same two models, and when one seed's model generalises better it does so on
every target. So, separately for in-domain cells (target = source: one per unit) and unseen
cells (several per unit):

- the mean difference A − B over the cells, with a 95% interval: a bootstrap over units (seeds
  resampled within each source, every target of a unit carried along; deviations rescaled by
  √(n/(n−1)) so the resampled variance is unbiased), its standard error times the t quantile
  with units − sources degrees of freedom (a percentile interval is too narrow with 3 seeds per
  source: it excluded 0 in 15% of A/A comparisons, this one in 5%);
- the p-value of a sign-flip permutation test on the units' summed differences (under "no
  difference" each unit's sign is a coin toss): exact over all 2^units sign patterns up to
  EXACT_UNITS units, else SIGN_FLIPS seeded random patterns;
- the probability of improvement, the share of cells where A beats B (ties count half), with the
  same unit bootstrap interval;
- the variance components of the unit means (between trained models, between targets within a
  model), the smallest difference the test detects with 80% power at the seeds it has, and, for a
  difference D, the seeds per source that power needs (`seeds_for`).

Per (source, target) the table gives both means over seeds and the paired difference with its 95%
t-interval over seeds; a star marks a difference significant at a 5% false discovery rate over
all the cells shown (paired t-tests over seeds, Benjamini–Hochberg). The aggregates per method
over unseen cells (mean and interquartile mean, with unit-bootstrap intervals) and a performance
profile (share of unseen cells above each accuracy) resist a few outlying cells. A cell one
method lacks is named, never imputed.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..core.errors import BenchmarkError
from ..core.sources import seen, seen_mask
from ..store import schema
from .figures import save_figure, t_half_width

# The mark of a result whose model collapsed (benchmark.training.metrics.collapse), in tables and here.
COLLAPSED = "!"
COLLAPSED_NOTE = (f"{COLLAPSED}: at least one seed's model collapsed: on its source's test set it put more than 90% "
                  "of the images in one class, or scored within 2 points of always predicting the majority class "
                  "(the run's `collapsed` tag says which).")

SEED = 0  # resampling and random sign patterns are seeded: the same results give the same numbers
BOOTSTRAP_RESAMPLES = 2000  # the standard error it estimates is within ~2% of its limit
EXACT_UNITS = 16  # up to 2^16 sign patterns enumerated; beyond, SIGN_FLIPS random ones
SIGN_FLIPS = 20000
ALPHA, POWER = 0.05, 0.80
FDR = 0.05  # the false discovery rate of the per-cell stars and the tables' ties
UNIT = ["source", "seed"]


@dataclass
class Power:
    """What the unit means say about the seeds a claim needs (unseen targets)."""
    sources: int
    seeds: float  # mean seeds per source
    targets: float  # mean unseen targets per unit
    between_models_sd: float  # sd of a unit's mean difference due to the pair of trained models
    within_model_sd: float | None  # sd of one target's difference around its unit's mean (None: one target)
    unit_sd: float  # sd of the unit means within a source (what the test's power depends on)
    mde: float | None  # smallest |difference| detected with POWER at ALPHA with these seeds
    df: int

    def seeds_for(self, difference: float, limit: int = 1000) -> int | None:
        """Seeds per source (same sources and targets) to detect `difference` with POWER."""
        for n in range(2, limit + 1):
            if power(abs(difference), self.unit_sd, self.sources * n, self.sources * (n - 1)) >= POWER:
                return n
        return None


@dataclass
class GroupSummary:
    group: str  # "in-domain" or "unseen"
    units: int
    cells: int
    mean_diff: float
    diff_ci: tuple[float, float] | None
    p_value: float | None
    p_exact: bool  # all sign patterns enumerated
    p_improvement: float
    p_improvement_ci: tuple[float, float] | None
    power: Power | None = None


@dataclass
class Aggregate:
    method: str
    mean: float
    mean_ci: tuple[float, float] | None
    iqm: float
    iqm_ci: tuple[float, float] | None


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    cells: pd.DataFrame  # source, target, seed, a, b, diff
    missing: list[str]  # "method on source -> target (seed s)" present for one method only
    groups: list[GroupSummary]
    per_cell: pd.DataFrame  # source, target, n, a_mean, b_mean, diff, half_width, p, outside_noise
    aggregates: list[Aggregate] = field(default_factory=list)

    @property
    def lower_is_better(self) -> bool:  # ECE, NLL, Brier: A improves on B where A − B < 0
        return self.metric in schema.LOWER_IS_BETTER

    @property
    def scale(self) -> float:  # percent points, or nats for NLL
        return schema.metric_scale(self.metric)


def side_rows(frame: pd.DataFrame, side: str) -> pd.Series:
    """The rows of one side of a comparison: `method`, or `method@backbone` with the backbone as
    tables name it (`mobilenet_v2`, `timm:convnext_atto`) or by its id (`mobilenet_v2:imagenet`).
    A method run on several backbones must name one: its runs are not one population."""
    method, _, backbone = side.partition("@")
    rows = frame["method"] == method
    if backbone:
        labels = frame["backbone"]
        return rows & ((labels == backbone) | ((labels == backbone.rpartition(":")[0]) & (":" in backbone)))
    ran_on = sorted(frame.loc[rows, "backbone"].unique())
    if len(ran_on) > 1:
        raise BenchmarkError(f"{method} ran on {len(ran_on)} backbones ({', '.join(ran_on)}): compare "
                             f"{method}@BACKBONE, one of them")
    return rows


def paired_cells(results: pd.DataFrame, a: str, b: str, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """The (source, target, seed) cells both sides have, and the ones only one has."""
    frame = results[results["metric"] == metric]
    keys = ["source", "target", "seed"]
    left = frame[side_rows(frame, a)].groupby(keys)["value"].mean().rename("a")
    right = frame[side_rows(frame, b)].groupby(keys)["value"].mean().rename("b")
    if left.empty or right.empty:
        absent = [m for m, part in ((a, left), (b, right)) if part.empty]
        raise BenchmarkError(f"no FINISHED results of {' and '.join(absent)} for metric {metric}")
    both = pd.concat([left, right], axis=1)
    missing = [f"{b if np.isnan(row.b) else a} has no {src} → {tgt} (seed {seed})"
               for (src, tgt, seed), row in both.iterrows() if np.isnan(row.a) or np.isnan(row.b)]
    cells = both.dropna().reset_index()
    cells["diff"] = cells["a"] - cells["b"]
    for side, method in (("a", a), ("b", b)):  # whether that seed's model collapsed (schema.COLLAPSED)
        flags = (frame[side_rows(frame, method)].groupby(keys)["collapsed"].any() if "collapsed" in frame
                 else pd.Series(dtype=bool))
        cells[f"{side}_collapsed"] = [bool(flags.get(k, False)) for k in zip(cells["source"], cells["target"],
                                                                            cells["seed"])]
    return cells, missing


# -- the unit-level statistics -------------------------------------------------------------------

def _units(cells: pd.DataFrame, column: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Per unit, the values of its cells; and each unit's stratum (source) index."""
    groups = list(cells.groupby(UNIT, sort=True)[column])
    sources = sorted({key[0] for key, _ in groups})
    return [g.to_numpy() for _, g in groups], np.array([sources.index(key[0]) for key, _ in groups])


def _resampled_units(strata: np.ndarray, resamples: int, seed: int = SEED) -> np.ndarray:
    """(resamples, units) unit indices: in each stratum, as many of its units as it has, drawn
    with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    columns = []
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        columns.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(columns, axis=1)


def _rescaled(values: list[np.ndarray], strata: np.ndarray) -> list[np.ndarray]:
    """Each unit's cells shifted by its deviation from its stratum's mean unit times √(n/(n−1)) − 1:
    resampled, the unit means then vary as an unbiased variance says, not (n−1)/n of it."""
    means = np.array([v.mean() for v in values])
    out = list(values)
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        n = len(members)
        if n > 1:
            centre = means[members].mean()
            for i in members:
                out[i] = values[i] + (np.sqrt(n / (n - 1)) - 1) * (means[i] - centre)
    return out


def unit_bootstrap(values: list[np.ndarray], strata: np.ndarray, statistic=None, cellwise=None,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """Replicates of a statistic of the pooled cells of stratified resamples of the units (each
    unit carrying all its cells; see _rescaled). `cellwise(x)`: the statistic is the mean of this
    function of the cells (vectorised); else `statistic(cells)` of each resample's cells."""
    scaled = _rescaled(values, strata)
    picks = _resampled_units(strata, resamples)
    if cellwise is not None:
        sums = np.array([cellwise(v).sum() for v in scaled])
        counts = np.array([len(v) for v in scaled])
        return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return np.array([statistic(np.concatenate([scaled[i] for i in row])) for row in picks])


def t_interval(estimate: float, replicates: np.ndarray, df: int,
               bounds: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """estimate ± t(0.975, df) × the replicates' standard deviation (clipped to `bounds`)."""
    from scipy import stats

    if df < 1:
        return None
    half = float(stats.t.ppf(1 - ALPHA / 2, df) * np.std(replicates, ddof=1))
    low, high = estimate - half, estimate + half
    if bounds:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return float(low), float(high)


@functools.lru_cache(maxsize=None)
def _all_signs(n: int) -> np.ndarray:
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)))


def sign_flip_p(sums: np.ndarray, seed: int = SEED) -> tuple[float, bool]:
    """Two-sided p of a sign-flip permutation test of the units' summed differences, and whether
    it is exact (every sign pattern) or drawn (SIGN_FLIPS seeded patterns, the observed one counted)."""
    n = len(sums)
    observed = abs(sums.sum())
    tolerance = 1e-12 * max(1.0, float(np.abs(sums).sum()))
    if n <= EXACT_UNITS:
        signs = _all_signs(n)
        return float(np.mean(np.abs(signs @ sums) >= observed - tolerance)), True
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(SIGN_FLIPS, n))
    return float((1 + np.sum(np.abs(signs @ sums) >= observed - tolerance)) / (SIGN_FLIPS + 1)), False


def power(difference: float, unit_sd: float, units: int, df: int) -> float:
    """Power of a two-sided ALPHA test of the mean of `units` unit means with sd `unit_sd` against a
    true `difference` (noncentral t with `df` degrees of freedom; the sign-flip test has about
    this power: tests/test_compare.py simulates it)."""
    from scipy import stats

    if unit_sd <= 0 or units < 2 or df < 1:
        return float("nan")
    ncp = difference / (unit_sd / np.sqrt(units))
    crit = stats.t.ppf(1 - ALPHA / 2, df)
    value = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    if not np.isfinite(value):  # scipy's nct returns nan at some large ncp: the normal limit there
        z = stats.norm.ppf(1 - ALPHA / 2)
        value = float(stats.norm.cdf(ncp - z) + stats.norm.cdf(-ncp - z))
    return value


def variance_components(cells: pd.DataFrame) -> Power | None:
    """Between trained models and between targets within a model, from the unseen cells: the unit
    means' spread within each source, and each cell's residual after its unit's and its (source,
    target) cell's means are removed."""
    from scipy import optimize

    unit_means = cells.groupby(UNIT)["diff"].mean()
    per_source = unit_means.groupby(level="source")
    seeds = per_source.size()
    df = int((seeds - 1).sum())
    if df < 1:
        return None
    unit_var = float(per_source.apply(lambda s: ((s - s.mean()) ** 2).sum()).sum() / df)
    resid = (cells["diff"] - cells.groupby(UNIT)["diff"].transform("mean")
             - cells.groupby(["source", "target"])["diff"].transform("mean")
             + cells.groupby("source")["diff"].transform("mean"))
    targets = cells.groupby(UNIT).size()
    t_per_source = cells.groupby("source")["target"].nunique()
    resid_df = int(((seeds - 1) * (t_per_source - 1)).sum())
    within = float(np.sqrt((resid ** 2).sum() / resid_df)) if resid_df > 0 else None
    mean_targets = float(targets.mean())
    between = np.sqrt(max(0.0, unit_var - (within ** 2 / mean_targets if within is not None else 0.0)))
    units = len(unit_means)
    unit_sd = float(np.sqrt(unit_var))
    mde = None
    if unit_sd > 0:
        se = unit_sd / np.sqrt(units)  # power is above 0.99 at a difference of 6 standard errors
        mde = float(optimize.brentq(lambda d: power(d, unit_sd, units, df) - POWER, 1e-9 * se, 6 * se))
    return Power(len(seeds), float(seeds.mean()), mean_targets, float(between), within, unit_sd, mde, df)


def _wins(x: np.ndarray) -> np.ndarray:
    return (x > 0) + 0.5 * (x == 0)  # ties count half


def summarise(group: str, cells: pd.DataFrame, with_power: bool = False, lower_is_better: bool = False) -> GroupSummary:
    """The group's mean difference, interval and sign-flip p; its probability of improvement (A
    better than B: higher, or lower where `lower_is_better`), and with `with_power` what the seeds
    can detect."""
    diffs, strata = _units(cells, "diff")
    units = len(diffs)
    mean = float(cells["diff"].mean())
    df = units - len(np.unique(strata))
    p, exact = (None, False)
    if units:
        sums = np.array([d.sum() for d in diffs])
        p, exact = (1.0, True) if np.all(sums == 0) else sign_flip_p(sums)
    wins = (lambda x: _wins(-x)) if lower_is_better else _wins
    improvement = lambda x: float(np.mean(wins(x)))  # noqa: E731
    ci = pi_ci = None
    if df >= 1:
        ci = t_interval(mean, unit_bootstrap(diffs, strata, cellwise=lambda x: x), df)
        pi_ci = t_interval(improvement(cells["diff"].to_numpy()), unit_bootstrap(diffs, strata, cellwise=wins), df,
                           bounds=(0.0, 1.0))
    return GroupSummary(group, units, len(cells), mean, ci, p, exact, improvement(cells["diff"].to_numpy()), pi_ci,
                        variance_components(cells) if with_power else None)


def aggregates(cells: pd.DataFrame, methods: dict[str, str]) -> list[Aggregate]:
    """Mean and interquartile mean (scipy's trim_mean, 25% off each end) of each method's unseen
    cells, with unit-bootstrap t-intervals."""
    from scipy import stats

    iqm = lambda x: float(stats.trim_mean(x, 0.25))  # noqa: E731
    out = []
    for column, method in methods.items():
        values, strata = _units(cells, column)
        df = len(values) - len(np.unique(strata))
        x = cells[column].to_numpy()
        mean_ci = iqm_ci = None
        if df >= 1:
            mean_ci = t_interval(float(x.mean()), unit_bootstrap(values, strata, cellwise=lambda v: v), df, (0.0, 1.0))
            iqm_ci = t_interval(iqm(x), unit_bootstrap(values, strata, iqm, resamples=1000), df, (0.0, 1.0))
        out.append(Aggregate(method, float(x.mean()), mean_ci, iqm(x), iqm_ci))
    return out


def per_cell(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (source, target): means over seeds, the paired difference with its t-interval, the
    paired t-test's p, and a star where Benjamini–Hochberg at FDR over these cells keeps it."""
    rows = []
    for (source, target), group in cells.groupby(["source", "target"], sort=False):
        n = len(group)
        diffs = group["diff"].to_numpy()
        half = t_half_width(float(np.std(diffs, ddof=1)) if n > 1 else None, n)
        p = paired_p(diffs)
        rows.append({"source": source, "target": target, "n": n, "a_mean": float(group["a"].mean()),
                     "b_mean": float(group["b"].mean()), "diff": float(diffs.mean()), "half_width": half, "p": p,
                     "a_collapsed": bool(group["a_collapsed"].any()), "b_collapsed": bool(group["b_collapsed"].any())})
    frame = pd.DataFrame(rows)
    frame["outside_noise"] = discoveries(frame["p"].tolist())
    return frame


def paired_p(diffs: np.ndarray) -> float | None:
    """Two-sided p of a paired t-test over seeds (scipy's ttest_1samp of the differences); 1 when
    every difference is 0; None when there is nothing to test: one seed, or the same nonzero
    difference on every seed (no spread to measure it against)."""
    from scipy import stats

    if len(diffs) < 2:
        return None
    if np.ptp(diffs) <= 1e-12:
        return 1.0 if abs(diffs[0]) <= 1e-12 else None
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def discoveries(p_values: list[float | None]) -> list[bool | None]:
    """Which p-values Benjamini–Hochberg keeps at FDR (scipy's false_discovery_control) among the
    ones given; None where there is no p (one seed)."""
    from scipy import stats

    present = [i for i, p in enumerate(p_values) if p is not None and not np.isnan(p)]
    out: list[bool | None] = [None] * len(p_values)
    if present:
        adjusted = stats.false_discovery_control([p_values[i] for i in present], method="bh")
        for i, q in zip(present, adjusted):
            out[i] = bool(q < FDR)
    return out


def compare(results: pd.DataFrame, a: str, b: str, metric: str = "acc", order: list[str] | None = None) -> Comparison:
    """The comparison of A and B; per-cell rows by source in `order` (then by name), each
    source's own test set first, then the other targets in `order`."""
    if a == b:
        raise BenchmarkError(f"compare {a} with another method, not with itself")
    cells, missing = paired_cells(results, a, b, metric)
    if cells.empty:
        raise BenchmarkError(f"{a} and {b} share no (source, target, seed) cell: nothing to compare")
    domain = seen_mask(cells)  # the target is (one of) the source's datasets
    lower = metric in schema.LOWER_IS_BETTER
    groups = [summarise(name, part, with_power=name == "unseen", lower_is_better=lower)
              for name, part in (("in-domain", cells[domain]), ("unseen", cells[~domain])) if len(part)]
    rank = {name: k for k, name in enumerate(order or [])}
    key = lambda name: (rank.get(name, len(rank)), name)  # noqa: E731
    cells = cells.assign(_s=cells["source"].map(key), _t=[(not seen(s, t), key(t)) for s, t in zip(cells["source"], cells["target"])])
    cells = cells.sort_values(["_s", "_t", "seed"], kind="stable").drop(columns=["_s", "_t"]).reset_index(drop=True)
    unseen = cells[~seen_mask(cells)]
    return Comparison(a, b, metric, cells, missing, groups, per_cell(cells),
                      aggregates(unseen, {"a": a, "b": b}) if len(unseen) else [])


# -- rendering ------------------------------------------------------------------------------------

def _pct(x: float | None, signed: bool = True, scale: float = 100) -> str:
    if x is None or np.isnan(x):
        return "–"
    return f"{scale * x:+.2f}" if signed else f"{scale * x:.2f}"


def _interval(ci: tuple[float, float] | None, scale: float = 100, signed: bool = True) -> str:
    if ci is None:
        return "–"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(scale * ci[0])}, {fmt.format(scale * ci[1])}]"


def _p(g: GroupSummary) -> str:
    if g.p_value is None:
        return "–"
    return f"{g.p_value:.3g}" + ("" if g.p_exact else " (drawn)")


def _units_word(scale: float) -> str:
    return "points" if scale == 100 else "nats"


def group_text(g: GroupSummary, metric: str = "acc") -> str:
    """One group's result in a line: "unseen +1.23 [-0.40, +2.86] points, p = 0.125"."""
    scale = schema.metric_scale(metric)
    interval = "" if g.diff_ci is None else f" {_interval(g.diff_ci, scale=scale)}"
    return f"{g.group} {_pct(g.mean_diff, scale=scale)}{interval} {_units_word(scale)}, p = {_p(g)}"


def power_text(g: GroupSummary, mde: float | None = None, scale: float = 100) -> str:
    """What the seeds can show: the variance components, the detectable difference, and (for a
    requested `mde`) the seeds per source it needs."""
    pw = g.power
    points = _units_word(scale)
    if pw is None:
        return "How many seeds: one seed per source here, so the spread between trained models is unknown; run at least two."
    within = "–" if pw.within_model_sd is None else f"{scale * pw.within_model_sd:.2f}"
    text = (f"How many seeds (unseen targets; 80% power, two-sided 5%): the difference between the two trained "
            f"models of a unit varies by {scale * pw.between_models_sd:.2f} {points} (sd) from one (source, seed) to "
            f"another, and one target's difference around its unit's mean by {within}; with "
            f"{pw.seeds:g} seed{'s' if pw.seeds != 1 else ''} per source over {pw.sources} source"
            f"{'s' if pw.sources != 1 else ''} ({g.units} units) the smallest detectable difference is "
            + ("–" if pw.mde is None else f"{scale * pw.mde:.2f} {points}") + ".")
    if mde is not None:
        need = pw.seeds_for(mde)
        text += (f" To detect {scale * mde:.2f} {points}: " + (f"{need} seeds per source." if need else
                                                             "more than 1000 seeds per source."))
    return text


def render(comparison: Comparison, selection_label: str, display=lambda name: name, mde: float | None = None) -> str:
    """The comparison as markdown: the summary per group, what the seeds can detect, the
    per-method aggregates, the per-cell table, the missing cells."""
    from tabulate import tabulate

    c = comparison
    seeds = int(c.cells.groupby(["source", "target"]).size().max())
    sources = c.cells["source"].nunique()
    units = int(c.cells.groupby(UNIT).ngroups)
    scale, better = c.scale, "<" if c.lower_is_better else ">"
    out = [f"**{c.a} vs {c.b}: {c.metric} ({schema.metric_unit(c.metric)}"
           f"{', lower is better' if c.lower_is_better else ''}), {selection_label}; unit: the pair of trained models sharing "
           f"(source, seed), {units} unit{'s' if units != 1 else ''} ({sources} source{'s' if sources != 1 else ''}, "
           f"up to {seeds} seed{'s' if seeds != 1 else ''} each)**", ""]
    rows = [[g.group, g.units, g.cells, _pct(g.mean_diff, scale=scale), _interval(g.diff_ci, scale=scale), _p(g),
             f"{g.p_improvement:.2f}", _interval(g.p_improvement_ci, scale=1, signed=False)] for g in c.groups]
    out.append(tabulate(rows, headers=["targets", "units", "cells", f"mean {c.a} − {c.b}", "95% CI",
                                       "sign-flip p", f"P({c.a} {better} {c.b})", "95% CI"],
                        tablefmt="github", disable_numparse=True))
    out += ["", "95% CI: bootstrap over units (seeds resampled within each source, all targets of a unit "
            "carried along), its standard error × t(units − sources); p: sign-flip permutation test on the "
            "units' differences, " + ("exact (every sign pattern)." if all(g.p_exact for g in c.groups) else
                                      f"{SIGN_FLIPS} seeded sign patterns where marked (drawn), else exact.")]
    unseen = next((g for g in c.groups if g.group == "unseen"), None)
    if unseen is not None:
        out += ["", power_text(unseen, mde, scale)]
    if c.aggregates:
        out += ["", "Unseen cells per method (IQM: mean of the middle 50% of cells; 95% CI as above):", ""]
        out.append(tabulate([[x.method, _pct(x.mean, False, scale), _interval(x.mean_ci, scale, signed=False),
                              _pct(x.iqm, False, scale), _interval(x.iqm_ci, scale, signed=False)] for x in c.aggregates],
                            headers=["method", "mean", "95% CI", "IQM", "95% CI"], tablefmt="github",
                            disable_numparse=True))
    n_tests = int(c.per_cell["p"].notna().sum())
    out += ["", f"Per cell (mean over seeds; Δ = {c.a} − {c.b} ± 95% t-interval over seeds; * = significant at a "
            f"{FDR:.0%} false discovery rate over the {n_tests} cells (Benjamini–Hochberg on paired t-tests over "
            "seeds)):", ""]
    cell_rows = []
    for r in c.per_cell.itertuples():
        diff = _pct(r.diff, scale=scale) + ("" if r.half_width is None else f" ± {scale * r.half_width:.2f}")
        cell_rows.append([f"{display(r.source)} → {display(r.target)}", r.n,
                          _pct(r.a_mean, False, scale) + (COLLAPSED if r.a_collapsed else ""),
                          _pct(r.b_mean, False, scale) + (COLLAPSED if r.b_collapsed else ""),
                          diff + ("*" if r.outside_noise else "")])
    out.append(tabulate(cell_rows, headers=["cell", "seeds", c.a, c.b, "Δ"], tablefmt="github",
                        disable_numparse=True))
    collapsed = [f"{method} on {display(source)} (seed {seed})"
                 for side, method in (("a", c.a), ("b", c.b))
                 for source, seed in c.cells[c.cells[f"{side}_collapsed"]][["source", "seed"]].drop_duplicates()
                 .itertuples(index=False)]
    if collapsed:
        out += ["", f"{COLLAPSED_NOTE} Here: {'; '.join(collapsed)}. Their units still count above."]
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
    scale, sign = c.scale, (-1 if c.lower_is_better else 1)
    errors = [0.0 if h is None or np.isnan(h) else scale * h for h in cells["half_width"]]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * len(cells) + 1.5)))
    colours = ["#1b7837" if sign * d > 0 else "#762a83" for d in cells["diff"]]  # green: A better
    y = np.arange(len(cells))
    ax.errorbar(scale * cells["diff"], y, xerr=errors, fmt="none", ecolor="0.4", capsize=3)
    ax.scatter(scale * cells["diff"], y, c=colours, zorder=3)
    ax.axvline(0, color="0.2", linewidth=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{c.a} − {c.b}, {c.metric} ({'percentage points' if scale == 100 else 'nats'}"
                  f"{'; lower is better' if c.lower_is_better else ''})")
    ax.set_title(f"{c.a} vs {c.b} per cell, {selection_label}\n(bars: 95% t-interval over seeds)")
    fig.tight_layout()
    written = save_figure(fig, path_stem)
    plt.close(fig)
    return written


def profile_figure(comparison: Comparison, selection_label: str, path_stem) -> list:
    """Performance profiles of both methods on the unseen cells: the share of cells whose score
    exceeds each threshold, with a 95% band from the unit bootstrap (as rliable draws them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = comparison
    unseen = c.cells[~seen_mask(c.cells)]
    if unseen.empty or c.lower_is_better:  # profiles are of scores in [0, 1], higher better: the accuracies
        return []
    thresholds = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, method, colour in (("a", c.a, "#1b7837"), ("b", c.b, "#762a83")):
        values, strata = _units(unseen, column)
        share = lambda x: (x[:, None] > thresholds[None, :]).mean(axis=0)  # noqa: E731
        curve = share(unseen[column].to_numpy())
        ax.plot(100 * thresholds, curve, color=colour, label=method)
        df = len(values) - len(np.unique(strata))
        if df >= 1:  # pointwise, as the intervals: curve ± t(df) x the unit bootstrap's standard error
            from scipy import stats

            scaled = _rescaled(values, strata)
            reps = np.array([share(np.concatenate([scaled[i] for i in picks]))
                             for picks in _resampled_units(strata, 500)])
            half = stats.t.ppf(1 - ALPHA / 2, df) * reps.std(axis=0, ddof=1)
            low, high = np.clip(curve - half, 0, 1), np.clip(curve + half, 0, 1)
            ax.fill_between(100 * thresholds, low, high, color=colour, alpha=0.2, linewidth=0)
    ax.set_xlabel(f"{c.metric} threshold τ (%)")
    ax.set_ylabel("share of unseen cells with score > τ")
    ax.set_title(f"Performance profiles on unseen targets, {selection_label}\n(bands: 95%, unit bootstrap within sources)")
    ax.legend()
    fig.tight_layout()
    written = save_figure(fig, path_stem)
    plt.close(fig)
    return written

