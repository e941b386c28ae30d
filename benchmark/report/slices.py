"""Where a model fails: the slices, groups and corruptions tables (`benchmark table --table slices |
groups | corruptions`), from the plain evaluations of trained models on slices of their targets
(`benchmark evaluate --protocol`, benchmark.data.slices) beside the job runs' full targets.

The unit is the trained model, (source, seed): a cell is the mean over seeds, each seed's value the
mean over the sources that did not train on the slice's dataset, with the 95% t-interval over
seeds, as in every table. Per-model quantities (a slice's drop from its full target, a group's
gap, a corruption error relative to a baseline) are computed per model first, then averaged the
same way. Group metrics are pandas group-bys over per-group accuracies (each group is evaluated as
its own slice, so there are no per-sample predictions for fairlearn's MetricFrame to group).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.errors import BenchmarkError
from ..core.sources import seen
from .tables import Cell, Table

TARGET_PARTS = r"^(?P<base>[^:]+):(?P<slice>.+)$"


def _parts(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (metric rows already chosen) with base and slice columns; slice empty for full targets."""
    parts = frame["target"].str.extract(TARGET_PARTS)
    out = frame.assign(base=parts["base"].fillna(frame["target"]), slice=parts["slice"].fillna(""))
    unseen = [not seen(s, b) for s, b in zip(out["source"], out["base"])]
    return out[np.asarray(unseen, dtype=bool)]


def _cell(per_model: pd.Series) -> Cell:
    """A cell from per-model values indexed by (source, seed): mean over sources per seed, then over seeds."""
    if per_model.empty:
        return Cell(None)
    per_seed = per_model.groupby(level="seed").mean()
    return Cell(per_seed.mean(), per_seed.std(ddof=1) if len(per_seed) > 1 else None, len(per_seed),
                by_seed=per_seed.to_dict())


def _values(frame: pd.DataFrame, method: str, base: str, slice_name: str) -> pd.Series:
    rows = frame[frame["method"].eq(method) & frame["base"].eq(base) & frame["slice"].eq(slice_name)]
    return rows.groupby(["source", "seed"])["value"].mean()


def _check(frame: pd.DataFrame, what: str, kind) -> pd.DataFrame:
    found = frame[frame["slice"].map(kind)]
    if found.empty:
        raise BenchmarkError(f"no {what} evaluations of models that did not train on their dataset "
                             "(benchmark evaluate --protocol ... --slices ... makes them)")
    return found


def is_corruption(slice_name: str) -> bool:
    return "@" in slice_name


def is_group(slice_name: str) -> bool:
    return "=" in slice_name


def slices_table(results: pd.DataFrame, metric: str, methods: list[str]) -> Table:
    """Methods x slices: the slice's value and its drop from the full target (same models)."""
    frame = _parts(results[results["metric"] == metric])
    sliced = _check(frame, "slice", lambda s: bool(s) and not is_corruption(s) and not is_group(s))
    names = list(dict.fromkeys(sorted(zip(sliced["base"], sliced["slice"]))))
    rows = []
    for method in methods:
        cells = []
        for base, name in names:
            on_slice = _values(frame, method, base, name)
            full = _values(frame, method, base, "")
            cells += [_cell(on_slice), _cell((on_slice - full).dropna())]
        rows.append((method, cells))
    columns = [c for base, name in names for c in (f"{base}:{name}", f"Δ {base}:{name}")]
    table = Table("Slices of the targets: each method on the slice, and Δ its change from the whole target "
                  "(the same trained models)", columns, rows, bold=False)
    table.notes.append("Mean over seeds of the mean over the sources that did not train on the slice's dataset; "
                       "± 95% t-interval over seeds. Δ < 0: the slice is harder than the whole target. Groups: "
                       "--table groups; corruptions: --table corruptions.")
    return table


def groups_table(results: pd.DataFrame, metric: str, methods: list[str]) -> list[Table]:
    """Per attribute (a dataset's `attribute=group` slices): each group, the worst group and the gap
    between the best and the worst, per trained model, then over models."""
    frame = _parts(results[results["metric"] == metric])
    grouped = _check(frame, "group", is_group)
    grouped = grouped.assign(attribute=grouped["slice"].str.partition("=")[0],
                             group=grouped["slice"].str.partition("=")[2])
    tables = []
    for (base, attribute), part in grouped.groupby(["base", "attribute"], sort=True):
        groups = sorted(part["group"].unique(), key=lambda g: _family_order(base, f"{attribute}={g}"))
        rows = []
        for method in methods:
            mine = part[part["method"].eq(method)]
            per_model = mine.pivot_table(index=["source", "seed"], columns="group", values="value", aggfunc="mean")
            per_model = per_model.reindex(columns=groups)
            complete = per_model.dropna()  # worst and gap only where every group was evaluated
            cells = [_cell(per_model[g].dropna()) for g in groups]
            cells += [_cell(complete.min(axis=1)), _cell(complete.max(axis=1) - complete.min(axis=1))]
            rows.append((method, cells))
        table = Table(f"{base} by {attribute}: each group, the worst group, and the gap between the best and the "
                      "worst group of each trained model", [*groups, "worst", "gap"], rows, bold=False)
        table.notes.append("Worst and gap per trained model (over the groups it was evaluated on, all of them), then "
                           "the mean over sources and seeds; ± 95% t-interval over seeds.")
        tables.append(table)
    return tables


def worst_groups(results: pd.DataFrame) -> pd.DataFrame:
    """Per trained model and (dataset, attribute) with groups evaluated, one row holding its worst
    group's value, as the target `<dataset>:<attribute>=worst` (for `benchmark compare --worst-group`)."""
    parts = results["target"].str.extract(TARGET_PARTS)
    grouped = results[parts["slice"].fillna("").str.contains("=", regex=False)]
    if grouped.empty:
        raise BenchmarkError("no group evaluations (benchmark evaluate --protocol ... --slices <dataset>:<attribute>="
                             "<group>,... makes them)")
    grouped = grouped.assign(target=grouped["target"].str.replace(r"=[^=]*$", "=worst", regex=True))
    keys = [c for c in grouped.columns if c != "value"]
    return grouped.groupby(keys, dropna=False, sort=False)["value"].min().reset_index()[list(results.columns)]


def _family_order(base: str, slice_name: str) -> tuple[int, str]:
    """Where its family lists the slice (groups in their natural order: age 0-3 before 4-19)."""
    from ..data.slices.base import family_of

    try:
        names = family_of(f"{base}:{slice_name}").names(base)
    except BenchmarkError:
        return (len(slice_name), slice_name)
    return (names.index(slice_name) if slice_name in names else len(names), slice_name)


def corruptions_tables(results: pd.DataFrame, metric: str, methods: list[str], baseline: str | None) -> list[Table]:
    """Per corruption (mean over its severities) with the mean corruption accuracy over all of them,
    and the mCE relative to `baseline` as ImageNet-C defines it (per corruption, the method's error
    summed over severities over the baseline's, then the mean over corruptions); and per severity."""
    frame = _parts(results[results["metric"] == metric])
    corrupted = _check(frame, "corruption", is_corruption)
    corrupted = corrupted.assign(corruption=corrupted["slice"].str.partition("@")[0],
                                 severity=corrupted["slice"].str.partition("@")[2].astype(int))
    from ..data.slices.corruptions import CORRUPTIONS

    names = [c for c in CORRUPTIONS if c in set(corrupted["corruption"])]
    severities = sorted(corrupted["severity"].unique())
    if baseline is not None and baseline not in set(corrupted["method"]):
        raise BenchmarkError(f"--baseline {baseline}: no corruption evaluations of that method")
    keys = ["source", "seed", "corruption", "severity"]
    by_method = {m: corrupted[corrupted["method"].eq(m)].groupby(keys)["value"].mean() for m in methods}
    rows, severity_rows = [], []
    for method in methods:
        values = by_method[method]
        if values.empty:
            rows.append((method, [Cell(None)] * (len(names) + 1 + (baseline is not None))))
            severity_rows.append((method, [Cell(None)] * len(severities)))
            continue
        per_corruption = values.groupby(["source", "seed", "corruption"]).mean().unstack("corruption")
        cells = [_cell(per_corruption[c].dropna()) if c in per_corruption else Cell(None) for c in names]
        cells.append(_cell(per_corruption.reindex(columns=names).dropna().mean(axis=1)))
        if baseline is not None:
            cells.append(_cell(mce(values, by_method[baseline], names)))
        rows.append((method, cells))
        per_severity = values.groupby(["source", "seed", "severity"]).mean().unstack("severity")
        severity_rows.append((method, [_cell(per_severity[s].dropna()) for s in severities]))
    columns = [*names, "mean (mCA)"] + ([f"mCE vs {baseline}"] if baseline is not None else [])
    table = Table("Common corruptions: each corruption (mean over its severities) and the mean corruption accuracy",
                  columns, rows, bold=False)
    table.notes.append("Mean over seeds of the mean over the sources that did not train on the target; ± 95% "
                       "t-interval over seeds. mCE (%): per corruption the method's error summed over severities "
                       "divided by the baseline's (the same source and seed), then the mean over corruptions; "
                       "below 100 is more robust than the baseline.")
    by_severity = Table("Common corruptions by severity (mean over the corruptions)", [f"severity {s}" for s in severities],
                        severity_rows, bold=False)
    return [table, by_severity]


def mce(values: pd.Series, baseline: pd.Series, corruptions: list[str]) -> pd.Series:
    """Per trained model (source, seed): ImageNet-C's mean corruption error of `values` relative to
    `baseline` (both indexed by source, seed, corruption, severity; accuracies), as a fraction."""
    error, base_error = (1 - values), (1 - baseline)
    joined = pd.concat({"m": error, "b": base_error}, axis=1, join="inner")
    summed = joined.groupby(["source", "seed", "corruption"]).sum()
    ce = (summed["m"] / summed["b"]).unstack("corruption").reindex(columns=corruptions)
    return ce.dropna().mean(axis=1)


def build_tables(kind: str, results: pd.DataFrame, metric: str, methods: list[str],
                 baseline: str | None = None) -> list[Table]:
    """The tables of one slice layout kind (benchmark.report.tables.SLICE_KINDS)."""
    if kind == "slices":
        tables = [slices_table(results, metric, methods)]
    elif kind == "groups":
        tables = groups_table(results, metric, methods)
    else:
        tables = corruptions_tables(results, metric, methods, baseline)
    for table in tables:
        table.metric = metric
    return tables
