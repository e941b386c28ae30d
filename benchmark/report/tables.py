"""`benchmark table`: the paper's Tables 1-5 and a per-class table, built from results.

Pure functions of the tidy results frame the store reads (benchmark.store: one row per method,
backbone, source, seed, target, metric, value), aggregated over seeds with pandas, and written with tabulate (markdown,
LaTeX) or pandas (CSV). Cells are percentages with two decimals, `mean ± h` over seeds when
there are several, h the half-width of the 95% t-interval of the mean over seeds (the CSV gives
mean, std, ci_low, ci_high and n). A missing cell (a job not run, or FAILED) prints as `–` with a footnote; a
mean over an incomplete row is computed over what exists and marked `*`. `--compare paper` puts
the paper's number and our difference beside each cell; means are always recomputed from cells
(two of the paper's printed means are wrong), the printed one appears only in the paper column.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..core.errors import BenchmarkError
from .compare import COLLAPSED, COLLAPSED_NOTE, FDR, discoveries, paired_p
from .figures import save_figure, t_half_width
from ..core.labels import CLASSES
from .selection import LABELS as SELECTION_LABELS
from ..core.sources import held_out, parts as source_parts, seen_mask
from ..store import schema

MISSING = "–"
TIED = "†"  # not distinguishable from the column's best (see ties)

LAYOUT_KINDS = ("per_source", "single_source", "backbones", "perclass", "leave_one_out", "fair", "recipes", "adaptation",
                "tta", "slices", "groups", "corruptions")
SLICE_KINDS = ("slices", "groups", "corruptions")  # read from the slice evaluations (benchmark.report.slices)


@dataclass(frozen=True)
class TableLayout:
    """One table of the paper, as paper_layouts.toml describes it."""

    name: str
    kind: str
    title: str
    source: str | None = None
    methods: tuple[str, ...] = ()
    paper_mean: str = "mean5"
    unseen_only: bool = False
    delta: tuple[str, str] | None = None
    bold: bool = True
    paper_backbone_names: dict[str, str] = field(default_factory=dict)
    row_labels: dict[str, str] = field(default_factory=dict)  # method -> the row's name (adaptation)
    paper_tables: tuple[str, ...] = ()  # where --compare paper looks the rows up (adaptation)


@lru_cache(maxsize=1)
def _layout_file() -> dict:
    import tomllib

    path = files("benchmark.report").joinpath("paper_layouts.toml")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def layouts() -> dict[str, TableLayout]:
    """Every table description, by name, in the file's order."""
    out = {}
    for name, spec in _layout_file()["tables"].items():
        spec = dict(spec)
        unknown = set(spec) - {f.name for f in dataclasses.fields(TableLayout)}
        if unknown or spec.get("kind") not in LAYOUT_KINDS:
            raise BenchmarkError(f"paper_layouts.toml: tables.{name}: unknown key(s) {', '.join(sorted(unknown))} "
                                 f"or kind {spec.get('kind')!r} (kinds: {', '.join(LAYOUT_KINDS)})")
        spec["methods"] = tuple(spec.get("methods", ()))
        spec["paper_tables"] = tuple(spec.get("paper_tables", ()))
        if "delta" in spec:
            spec["delta"] = tuple(spec["delta"])
        out[name] = TableLayout(name=name, **spec)
    return out


def paper_order() -> list[str]:
    return list(_layout_file()["datasets"]["order"])


def display(name: str) -> str:
    """A dataset's name as the paper prints it; a multi-source job's as its datasets' joined by +."""
    names = _layout_file()["datasets"]["display"]
    return "+".join(names.get(part, part) for part in source_parts(name))


def mixed_environments(results: pd.DataFrame) -> list[str]:
    """A warning naming the runs of each environment, when the results come from more than one."""
    envs = list(dict.fromkeys(results["env"]))
    if len(envs) < 2:
        return []
    jobs = results.drop_duplicates(["method", "source", "seed"])
    parts = []
    for env in envs:
        cells = jobs[jobs["env"] == env]
        listed = ", ".join(f"{r.method} on {r.source} (seed {r.seed})" for r in cells.head(6).itertuples())
        more = f" and {len(cells) - 6} more" if len(cells) > 6 else ""
        parts.append(f"[{env}]: {listed}{more}")
    return [f"the results mix {len(envs)} environments, whose last bits (and so accuracies) may differ: "
            + "; ".join(parts)]


def protocol_layout(name: str) -> tuple[list[str], list[str], list[str]]:
    """(sources, datasets, methods) of a protocol file of that name; empty when there is none."""
    from ..jobs.protocol import ProtocolError, load_protocol

    try:
        # Its layout only: the runs were checked when they trained (and checking the
        # hyperparameters would import every method, and torch, for a table).
        protocol = load_protocol(name, methods_checked=False)
    except ProtocolError:
        return [], [], []
    return list(protocol.sources), list(protocol.datasets), list(protocol.methods)


def source_label(source: str, datasets: list[str]) -> str:
    """A train set as a row label: its display name, or "all but X" for a leave-one-out fold."""
    rest = held_out(source, datasets)
    return f"all but {display(rest[0])}" if len(source_parts(source)) > 1 and len(rest) == 1 else display(source)


def default_table(sources: list[str]) -> str:
    """The table `benchmark table` writes unless told: leave-one-out for multi-source grids, else Table 1."""
    return "lodo" if any(len(source_parts(s)) > 1 for s in sources) else "table1"


def paper_numbers() -> pd.DataFrame:
    return pd.read_csv(files("benchmark.report").joinpath("paper_tables.csv"))


@dataclass
class Cell:
    mean: float | None  # fraction
    std: float | None = None  # None with fewer than two seeds: there is no spread to show
    seeds: int = 0
    partial: bool = False  # a mean over an incomplete row
    by_seed: dict[int, float] = field(default_factory=dict)  # seed -> value: ties are tested paired over seeds
    collapsed: bool = False  # a seed's model collapsed (COLLAPSED)

    @property
    def half_width(self) -> float | None:
        """Half-width of the 95% t-interval of the mean over seeds (None with fewer than two)."""
        return t_half_width(self.std, self.seeds)

    @property
    def interval(self) -> tuple[float | None, float | None]:
        hw = self.half_width
        return (None, None) if hw is None else (self.mean - hw, self.mean + hw)

    def text(self, with_interval: bool, scale: float = 100.0) -> str:
        if self.mean is None:
            return MISSING
        out = f"{scale * self.mean:.2f}"
        if with_interval and self.half_width is not None:
            out += f" ± {scale * self.half_width:.2f}"
        return out + ("*" if self.partial else "") + (COLLAPSED if self.collapsed else "")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]
    notes: list[str] = field(default_factory=list)
    paper: dict[tuple[str, str], float] = field(default_factory=dict)  # (row, column) -> paper %
    bold: bool = True
    delta_row: tuple[str, str] | None = None  # (minuend, subtrahend) rows for a Δ row
    selection: str = "last"  # the model-selection rule the cells were read with (benchmark.report.selection)
    metric: str = "acc"  # what the cells hold: its display scale, and whether the best is the lowest


def _cells(frame: pd.DataFrame, targets: list[str], mean_over: list[str]) -> tuple[list[Cell], bool]:
    """Cells of one row (one method/backbone/source) and whether any was missing."""
    by_target = frame.groupby("target")["value"]
    cells, missing = [], False
    for t in targets:
        if t in by_target.groups:
            values = by_target.get_group(t)
            rows = frame.loc[values.index]
            by_seed = rows.groupby("seed")["value"].mean().to_dict()
            collapsed = bool(rows["collapsed"].any()) if "collapsed" in rows else False
            cells.append(Cell(values.mean(), values.std(ddof=1) if len(values) > 1 else None, len(values),
                              by_seed=by_seed, collapsed=collapsed))
        else:
            cells.append(Cell(None))
            missing = True
    # Mean: per seed over the `mean_over` targets, then mean and spread over seeds.
    sub = frame[frame["target"].isin(mean_over)]
    per_seed = sub.groupby("seed")["value"].mean()
    present = set(sub["target"])
    incomplete = not set(mean_over) <= present
    if len(per_seed):
        collapsed = bool(sub["collapsed"].any()) if "collapsed" in sub else False
        cells.append(Cell(per_seed.mean(), per_seed.std(ddof=1) if len(per_seed) > 1 else None, len(per_seed),
                          partial=incomplete, by_seed=per_seed.to_dict(), collapsed=collapsed))
    else:
        cells.append(Cell(None))
    return cells, missing or incomplete


def in_paper_order(datasets: list[str]) -> list[str]:
    """The paper's datasets in its order, then any others in the protocol's."""
    order = paper_order()
    return sorted(datasets, key=lambda d: order.index(d) if d in order else len(order))


def ordered_targets(source: str, datasets: list[str]) -> list[str]:
    """The source's own test set first (a multi-source job's: each of its datasets), then the
    others in the paper's (or protocol's) order."""
    ordered = in_paper_order(datasets)
    mine = [d for d in ordered if d in source_parts(source)] if len(source_parts(source)) > 1 else [source]
    return [*mine, *(d for d in ordered if d not in mine)]


def method_rows(acc: pd.DataFrame, methods: list[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """(row label, method, frame) per method; `method@backbone` rows when backbones differ, and
    `method [name=value]` rows for the points of a sweep (never averaged together)."""
    several = acc["backbone"].nunique() > 1
    rows = []
    for method in methods:
        frame = acc[acc["method"] == method]
        parts = ([(f"{method}@{b}", frame[frame["backbone"] == b]) for b in sorted(frame["backbone"].unique())]
                 if several else [(method, frame)]) or [(method, frame)]
        for label, part in parts:
            points = sorted(part["sweep"].unique()) if "sweep" in part else []
            if len(points) > 1:
                rows += [(f"{label} [{p}]", method, part[part["sweep"] == p]) for p in points]
            else:
                rows.append((label, method, part))
    return rows


def _missing_note(table: Table) -> None:
    table.notes.append(f"{MISSING}: no FINISHED run; * mean over the cells that exist")


def per_source_tables(layout: TableLayout, acc: pd.DataFrame, sources: list[str], datasets: list[str],
                      methods: list[str]) -> list[Table]:
    """One table per source (Table 1); rows: the methods run."""
    tables = []
    for source in sources:
        targets = ordered_targets(source, datasets)
        rows, missing = [], False
        for label, _, frame in method_rows(acc, methods):
            cells, m = _cells(frame[frame["source"] == source], targets, targets)
            rows.append((label, cells))
            missing |= m
        table = Table(layout.title.format(source=display(source)), [display(t) for t in targets] + ["Mean"], rows,
                      bold=layout.bold)
        table.paper = _paper_lookup(layout.name, source, methods, targets, layout.paper_mean)
        if missing:
            _missing_note(table)
        tables.append(table)
    return tables


def leave_one_out_table(layout: TableLayout, acc: pd.DataFrame, sources: list[str], datasets: list[str],
                        methods: list[str]) -> Table:
    """Leave one domain out: rows the methods, columns each held-out dataset (the accuracy there
    of the job trained on all the others), and their mean."""
    held = {held_out(s, datasets)[0]: s for s in sources if len(held_out(s, datasets)) == 1}
    if not held:
        raise BenchmarkError("no leave-one-out fold among the sources (a source trained on all datasets but one); "
                             "this table is for protocols with leave_one_out = true")
    targets = [t for t in in_paper_order(datasets) if t in held]
    acc = acc[[held.get(t) == s for s, t in zip(acc["source"], acc["target"])]]  # each fold's held-out cell only
    rows, missing = [], False
    for label, _, frame in method_rows(acc, methods):
        cells, m = _cells(frame, targets, targets)
        rows.append((label, cells))
        missing |= m
    table = Table(layout.title.format(n=len(datasets) - 1), [display(t) for t in targets] + ["Mean"], rows,
                  bold=layout.bold)
    if missing:
        _missing_note(table)
    return table


def _paper_lookup(name: str, source: str, rows: list[str], targets: list[str], mean_key: str,
                  row_key=lambda r: r) -> dict[tuple[str, str], float]:
    paper = paper_numbers()
    paper = paper[(paper["table"] == name) & (paper["source"] == source)]
    out = {}
    for _, rec in paper.iterrows():
        for row in rows:
            if rec["method"] == row_key(row):
                column = "Mean" if rec["target"] == mean_key else display(rec["target"])
                out[(row, column)] = float(rec["accuracy"])
    return out


def single_source_table(layout: TableLayout, acc: pd.DataFrame, source: str, datasets: list[str]) -> Table:
    """One source, one row per method of the layout (Tables 2, 4, 5)."""
    acc = acc[acc["source"] == source]
    methods = list(layout.methods)
    targets = [t for t in ordered_targets(source, datasets) if not (layout.unseen_only and t == source)]
    rows, missing = [], False
    for label, _, frame in method_rows(acc, methods):
        cells, m = _cells(frame, targets, targets)
        rows.append((label, cells))
        missing |= m
    table = Table(layout.title.format(source=display(source)), [display(t) for t in targets] + ["Mean"], rows,
                  bold=layout.bold, delta_row=layout.delta)
    table.paper = _paper_lookup(layout.name, source, methods, targets, layout.paper_mean)
    if missing:
        _missing_note(table)
    return table


def adaptation_table(layout: TableLayout, acc: pd.DataFrame, source: str, datasets: list[str]) -> Table:
    """One source: a row per way of adapting CLIP (the layout's methods, in its order, named by its
    row_labels), columns in-domain, mean unseen, then each unseen target; a method not in the
    store keeps its row, empty. The paper's numbers come from the layout's paper_tables."""
    acc = acc[acc["source"] == source]
    targets = ordered_targets(source, datasets)
    own, unseen = targets[0], targets[1:]
    rows, absent, missing = [], [], False
    for method in layout.methods:
        frame = acc[acc["method"] == method]
        if frame.empty:
            absent.append(layout.row_labels.get(method, method))
        cells, m = _cells(frame, [own, *unseen], unseen)
        rows.append((layout.row_labels.get(method, method), [cells[0], cells[-1], *cells[1:-1]]))
        missing |= m and not frame.empty
    columns = [f"{display(own)} (in-domain)", "Mean unseen", *(display(t) for t in unseen)]
    table = Table(layout.title.format(source=display(source)), columns, rows, bold=layout.bold)
    paper = paper_numbers()
    paper = paper[paper["table"].isin(layout.paper_tables) & (paper["source"] == source)]
    for rec in paper.itertuples():
        label = layout.row_labels.get(rec.method)
        if label is None or rec.method not in layout.methods:
            continue
        if rec.target == own:
            table.paper[(label, columns[0])] = float(rec.accuracy)
        elif rec.target in unseen:
            table.paper[(label, display(rec.target))] = float(rec.accuracy)
        elif rec.target == "mean4":
            table.paper[(label, "Mean unseen")] = float(rec.accuracy)
    if absent:
        table.notes.append(f"Not in this store (not run, or not applicable with the grid's encoder: its run log says "
                           f"which): {', '.join(absent)}.")
    if missing:
        _missing_note(table)
    return table


def backbones_table(layout: TableLayout, acc: pd.DataFrame, source: str, datasets: list[str]) -> Table:
    """One source; a row per method of the layout on each backbone run (Table 3)."""
    acc = acc[(acc["source"] == source) & (acc["method"].isin(layout.methods))]
    targets = ordered_targets(source, datasets)
    rows, missing = [], False
    for backbone in sorted(acc["backbone"].unique()):
        for method in layout.methods:
            cells, m = _cells(acc[(acc["backbone"] == backbone) & (acc["method"] == method)], targets, targets)
            rows.append((f"{method}@{backbone}", cells))
            missing |= m
    table = Table(layout.title.format(source=display(source)), [display(t) for t in targets] + ["Mean"], rows,
                  bold=layout.bold)

    def paper_row(row: str) -> str:
        method, backbone = row.split("@")
        return f"{method}@{layout.paper_backbone_names.get(backbone, backbone)}"

    table.paper = _paper_lookup(layout.name, source, [r for r, _ in rows], targets, layout.paper_mean,
                                row_key=paper_row)
    if missing:
        _missing_note(table)
    return table


def _unseen_and_in_domain(acc: pd.DataFrame, part: pd.Series, seen: pd.Series, sources: list[str]) -> tuple[list[Cell], bool]:
    """Two cells for the rows `part` of `acc`: the mean accuracy on unseen targets and in-domain.
    Per seed: the mean over every source's job (each job's targets averaged first); then mean and
    95% interval over seeds. And whether a source was missing (the cell is then partial)."""
    cells, missing = [], False
    for where in (part & ~seen, part & seen):
        sub = acc[where]
        per_job = sub.groupby(["seed", "source"])["value"].mean()
        per_seed = per_job.groupby(level="seed").mean()
        if per_seed.empty:
            cells.append(Cell(None))
            missing = True
            continue
        partial = bool((per_job.groupby(level="seed").size() < len(sources)).any())
        missing |= partial
        cells.append(Cell(per_seed.mean(), per_seed.std(ddof=1) if len(per_seed) > 1 else None, len(per_seed),
                          partial=partial, by_seed=per_seed.to_dict(), collapsed=bool(sub["collapsed"].any())))
    return cells, missing


def fair_table(layout: TableLayout, acc: pd.DataFrame, sources: list[str], datasets: list[str],
               methods: list[str]) -> Table:
    """Better method or better pretraining: a row per method, for each backbone its mean accuracy on
    the targets each job did not train on and on its own test set (`_unseen_and_in_domain`), bold
    and ties per column as in every table, so each backbone's best method stands out."""
    acc = acc[acc["source"].isin(sources) & acc["target"].isin(datasets)]
    seen = seen_mask(acc)
    backbones = sorted(acc["backbone"].unique())
    rows, missing = [], False
    for method in methods:
        cells = []
        for backbone in backbones:
            found, absent = _unseen_and_in_domain(acc, acc["method"].eq(method) & acc["backbone"].eq(backbone), seen,
                                                  sources)
            cells += found
            missing |= absent
        rows.append((method, cells))
    columns = [f"{backbone} {kind}" for backbone in backbones for kind in ("unseen", "in-domain")]
    table = Table(layout.title.format(n=len(sources)), columns, rows, bold=layout.bold)
    if missing:
        table.notes.append(f"{MISSING}: no FINISHED run; * mean over the sources that have one")
    return table


def split_recipe(label: str) -> tuple[str, str]:
    """("erm", "sam+swad") from a results method label "erm+sam+swad" (benchmark.store.base.method_label);
    ("erm", "") without a recipe."""
    method, _, recipe = label.partition("+")
    return method, recipe


def recipes_table(layout: TableLayout, results: pd.DataFrame, metric: str, sources: list[str],
                  datasets: list[str], methods: list[str]) -> Table:
    """Methods x domain-generalization recipes: a row per method, for each recipe it wore (none,
    SWAD, SAM, ASAM, MixStyle, and any combination run) its mean accuracy on unseen targets and
    in-domain (as the fair table), and in the notes the paired comparison (`benchmark compare`)
    of each recipe against none for the same method."""
    from . import compare as comparisons
    acc = results[(results["metric"] == metric) & results["source"].isin(sources) & results["target"].isin(datasets)]
    if acc.empty:
        raise BenchmarkError("no results to build the recipes table from")
    seen = seen_mask(acc)
    split = acc["method"].map(split_recipe)
    base, recipe = split.str[0], split.str[1]
    recipes = sorted(recipe.unique(), key=lambda r: (r.count("+"), r != "", r))
    order = list(dict.fromkeys(split_recipe(m)[0] for m in methods))
    rows, missing, notes = [], False, []
    for method in order:
        cells = []
        for name in recipes:
            found, absent = _unseen_and_in_domain(acc, base.eq(method) & recipe.eq(name), seen, sources)
            cells += found
            missing |= absent
        rows.append((method, cells))
        for name in recipes:
            if not name or not ((base == method) & (recipe == name)).any() or not ((base == method) & (recipe == "")).any():
                continue
            try:
                comparison = comparisons.compare(results, f"{method}+{name}", method, metric)
            except BenchmarkError as exc:
                notes.append(f"{method}+{name} vs {method}: {exc}")
                continue
            notes.append(f"{method}+{name} − {method} ({comparison.groups[0].units} (source, seed) units): "
                         + "; ".join(comparisons.group_text(g, metric) for g in comparison.groups))
    columns = [f"{name or 'none'} {kind}" for name in recipes for kind in ("unseen", "in-domain")]
    table = Table(layout.title.format(n=len(sources)), columns, rows, bold=layout.bold)
    if notes:
        what = "test-time adaptation" if layout.kind == "tta" else "recipe"
        table.notes.append(f"Each {what} against none, paired over the cells both have (benchmark compare: "
                           "mean difference, 95% unit-bootstrap interval, sign-flip p):")
        table.notes += notes
    if missing:
        table.notes.append(f"{MISSING}: no FINISHED run; * mean over the sources that have one")
    return table


def tta_cost_note(costs: pd.DataFrame) -> str:
    """The cost line of the tta table from the evaluations' `tta/` metrics (a row per evaluation:
    tta, seconds_per_image, forwards, backwards, batches): each method's time per test image, its
    ratio to no adaptation's, and its network passes per batch."""
    if costs.empty:
        return ""
    mean = costs.groupby("tta")[["seconds_per_image", "forwards", "backwards", "batches"]].mean()
    mean = mean.loc[sorted(mean.index, key=lambda name: (name != "none", name))]
    plain = mean.loc["none", "seconds_per_image"] if "none" in mean.index else None
    parts = []
    for name, row in mean.iterrows():
        ratio = f", x{row.seconds_per_image / plain:.1f}" if plain else ""
        passes = f"{row.forwards / row.batches:.3g} forward + {row.backwards / row.batches:.3g} backward per batch"
        parts.append(f"{name} {1000 * row.seconds_per_image:.2f} ms{ratio} ({passes})")
    return ("Cost per test image on the machine that adapted (mean over evaluations; x: relative to the same "
            "stream without adaptation): " + "; ".join(parts) + ".")


def perclass_table(layout: TableLayout, results: pd.DataFrame, sources: list[str], datasets: list[str],
                   methods: list[str]) -> Table:
    rows = []
    for method in methods:
        for source in sources:
            for target in ordered_targets(source, datasets):
                frame = results[(results["method"] == method) & (results["source"] == source)
                                & (results["target"] == target)]
                if frame.empty:
                    continue
                cells = []
                for key in [f"acc/{c}" for c in CLASSES] + ["mean_class_acc"]:
                    values = frame[frame["metric"] == key]["value"]
                    cells.append(Cell(values.mean() if len(values) else None,
                                      values.std(ddof=1) if len(values) > 1 else None, len(values)))
                rows.append((f"{method}: {display(source)} → {display(target)}", cells))
    return Table(layout.title, list(CLASSES) + ["mean per class"], rows, bold=False)


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "†": r"$^\dagger$", "→": r"$\rightarrow$", "Δ": r"$\Delta$", "−": "-", "–": "--", "—": "---"}


def latex_escape(text: str) -> str:
    """`text` with every character LaTeX treats specially (and the non-ASCII ones we print) escaped."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def render(table: Table, fmt: str, compare: bool = False) -> str:
    with_std = any(c.seeds > 1 for _, cells in table.rows for c in cells)
    seeds = max((c.seeds for _, cells in table.rows for c in cells), default=0)
    scale = schema.metric_scale(table.metric)
    best = {}
    if table.bold:
        for j in range(len(table.columns)):
            values = [cells[j].mean for _, cells in table.rows if cells[j].mean is not None]
            if len(values) >= 2:  # bold marks a winner: only where two or more values compete
                best[j] = min(values) if table.metric in schema.LOWER_IS_BETTER else max(values)
    tied, tests = ties(table, best)
    escape = latex_escape if fmt == "latex" else (lambda text: text.replace("|", "\\|"))
    has_paper = compare and any((name, col) in table.paper for name, _ in table.rows for col in table.columns)
    body = []
    for name, cells in table.rows:
        line = [escape(name)]
        for j, cell in enumerate(cells):
            text = escape(cell.text(with_std, scale))
            if j in best and cell.mean is not None and np.isclose(cell.mean, best[j]):
                text = f"\\textbf{{{text}}}" if fmt == "latex" else f"**{text}**"
            elif (name, j) in tied:
                text += r"$^\dagger$" if fmt == "latex" else TIED
            ref = table.paper.get((name, table.columns[j])) if has_paper else None
            if ref is not None:
                diff = "" if cell.mean is None else f", {round(100 * cell.mean - ref, 2) + 0.0:+.2f}"
                text += f" ({ref:.2f}{diff})"
            line.append(text)
        body.append(line)
    if table.delta_row:
        rows = dict(table.rows)
        a, b = rows.get(table.delta_row[0]), rows.get(table.delta_row[1])
        if a and b:
            body.append([escape("Δ")] + [MISSING if x.mean is None or y.mean is None else f"{scale * (x.mean - y.mean):+.2f}"
                                         for x, y in zip(a, b)])
    header = [escape(h) for h in ["Method", *table.columns]]
    rule = SELECTION_LABELS[table.selection]
    title = table.title + (f" ({seeds} seeds, mean ± 95% t-interval over seeds; {rule})" if seeds > 1
                           else f" (1 seed; {rule})" if seeds == 1 else f" ({rule})")
    notes = list(table.notes)
    if any(cell.collapsed for _, cells in table.rows for cell in cells):
        notes.append(COLLAPSED_NOTE)
    tie_note = ""
    if best:
        tie_note = (f"Bold: the best mean of each column; {TIED}: not distinguishable from it (paired t-test over the "
                    f"seeds both have, Benjamini–Hochberg at a {FDR:.0%} false discovery rate over this table's "
                    f"{tests} comparison{'s' if tests != 1 else ''}; a cell with one seed in common, or the same difference on each, is not "
                    "tested)." if tests else
                    "Bold: the best mean of each column; no other cell shares two or more seeds with its column's "
                    "best, so no difference is tested and no tie marked." if seeds > 1 else
                    "Bold: the best mean of each column; one seed per cell, so no difference is tested and no tie marked.")
        if fmt != "latex":  # LaTeX: in the caption
            notes.append(tie_note)
    if has_paper:
        title += " — ours (paper, ours − paper)"
    elif compare:
        notes.append("No paper value exists for any cell of this table: nothing to compare.")
    if fmt == "latex":
        caption = title + (". " + tie_note.replace(TIED, "†") if tie_note else "")
        return latex_table(caption, header, body, notes, latex_label(table.title))
    return (f"**{title}**\n\n" + tabulate(body, headers=header, tablefmt="github", disable_numparse=True)
            + "".join(f"\n\n{n}" for n in notes) + "\n")


def ties(table: Table, best: dict[int, float]) -> tuple[set[tuple[str, int]], int]:
    """The (row, column) cells that cannot be told apart from their column's best mean: a paired
    t-test over the seeds both have (two or more), Benjamini–Hochberg over all of the table's tests
    (compare.discoveries); and how many tests there were."""
    keys, p_values = [], []
    for j, top in best.items():
        leader = next(cells[j] for _, cells in table.rows if cells[j].mean is not None and np.isclose(cells[j].mean, top))
        for name, cells in table.rows:
            cell = cells[j]
            if cell.mean is None or np.isclose(cell.mean, top):
                continue
            common = sorted(set(cell.by_seed) & set(leader.by_seed))
            p = paired_p(np.array([leader.by_seed[s] - cell.by_seed[s] for s in common]))
            if p is None:  # one seed in common, or the same difference on each: not tested, not marked
                continue
            keys.append((name, j))
            p_values.append(p)
    kept = discoveries(p_values)
    return {key for key, different in zip(keys, kept) if not different}, len(keys)


def latex_label(title: str) -> str:
    """`tab:` and the title's words, lower-case, joined by hyphens: a label LaTeX accepts."""
    import re

    return "tab:" + "-".join(re.findall(r"[a-z0-9]+", title.lower()))[:60]


def latex_table(title: str, header: list[str], body: list[list[str]], notes: list[str], label: str = "") -> str:
    """One booktabs `table` float: caption, label, the row names left-aligned, the numbers right-aligned."""
    frame = pd.DataFrame(body, columns=header)
    latex = frame.style.hide(axis="index").to_latex(
        hrules=True, caption=latex_escape(title), label=label or None, position_float="centering",
        column_format="l" + "r" * (len(header) - 1), environment="table")
    return latex + "".join(f"% {line}\n" for n in notes for line in n.splitlines())


def to_frame(table: Table) -> pd.DataFrame:
    return pd.DataFrame([{"table": table.title, "selection": table.selection, "row": name, "column": col,
                          "mean": cell.mean, "std": cell.std,
                          "ci_low": cell.interval[0], "ci_high": cell.interval[1], "n": cell.seeds,
                          "partial": cell.partial}
                         for name, cells in table.rows for col, cell in zip(table.columns, cells)])


def build_tables(name: str, results: pd.DataFrame, metric: str, sources: list[str], datasets: list[str],
                 methods: list[str], selection: str = "last") -> list[Table]:
    """The tables of layout `name` from the results frame (benchmark.store.RESULT_COLUMNS), read
    at the epochs the model-selection rule `selection` picked (benchmark.report.selection)."""
    tables = _build(name, results, metric, sources, datasets, methods)
    for table in tables:
        table.selection = selection
        if name != "perclass":  # per-class tables hold per-class accuracies whatever the metric
            table.metric = metric
    return tables


def _build(name: str, results: pd.DataFrame, metric: str, sources: list[str], datasets: list[str],
           methods: list[str]) -> list[Table]:
    if results.empty:
        raise BenchmarkError("no FINISHED runs to build a table from")
    known = layouts()
    if name not in known:
        raise BenchmarkError(f"unknown table {name!r} (known: {', '.join(known)}, all)")
    layout = known[name]
    if layout.kind == "perclass":
        return [perclass_table(layout, results, sources, datasets, methods)]
    if layout.kind in SLICE_KINDS:
        raise BenchmarkError(f"table {name!r} is built by benchmark.report.slices.build_tables")
    acc = results[results["metric"] == metric]
    if layout.kind == "leave_one_out":
        return [leave_one_out_table(layout, acc, sources, datasets, methods)]
    if layout.kind == "per_source":
        return per_source_tables(layout, acc, sources, datasets, methods)
    if layout.kind == "fair":
        return [fair_table(layout, acc, sources, datasets, methods)]
    if layout.kind in ("recipes", "tta"):  # tta: the test-time adaptations in the method labels' place of recipes
        return [recipes_table(layout, results, metric, sources, datasets, methods)]
    # The layout's source when the protocol trains on it, else the protocol's first source.
    source = layout.source if layout.source in sources else sources[0]
    if layout.kind == "backbones":
        return [backbones_table(layout, acc, source, datasets)]
    if layout.kind == "adaptation":
        return [adaptation_table(layout, acc, s, datasets) for s in sources]
    return [single_source_table(layout, acc, source, datasets)]


def write_figures(results: pd.DataFrame, metric: str, sources: list[str], datasets: list[str],
                  methods: list[str], folder: Path, selection: str = "last") -> list[Path]:
    """A source x target heatmap per method and a bar chart of mean unseen accuracy per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    acc = results[results["metric"] == metric]
    written = []
    order = in_paper_order(datasets)
    for method in methods:
        rows = [s for s in order if s in sources] + [s for s in sources if s not in order]  # then multi-source
        grid = (acc[acc["method"] == method].groupby(["source", "target"])["value"].mean().unstack()
                .reindex(index=rows, columns=order))
        labels = [source_label(r, datasets) for r in rows]
        fig, ax = plt.subplots(figsize=(6 + 0.07 * max(map(len, labels)), 5))  # room for long row labels
        im = ax.imshow(100 * grid.to_numpy(dtype=float), vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(order)), [display(d) for d in order], rotation=30, ha="right")
        ax.set_yticks(range(len(grid.index)), labels)
        ax.set_xlabel("test set")
        ax.set_ylabel("train set")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = grid.iat[i, j]
                # viridis is dark below ~60%: light text there, dark text on the bright end.
                ax.text(j, i, MISSING if pd.isna(v) else f"{100 * v:.1f}", ha="center", va="center",
                        color="white" if pd.isna(v) or v < 0.6 else "black")
        ax.set_title(f"{method}: {metric} (%), {SELECTION_LABELS[selection]}")
        fig.colorbar(im, ax=ax, label=f"{metric} (%)")
        fig.tight_layout()
        written += save_figure(fig, folder / f"heatmap_{method}")
        plt.close(fig)
    unseen = acc[~seen_mask(acc)].groupby(["method", "seed"])["value"].mean().reset_index()
    stats = unseen.groupby("method")["value"].agg(["mean", "std", "count"]).reindex(methods).dropna(subset=["mean"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(stats) + 2), 4))
    seeds = int(stats["count"].max()) if len(stats) else 0
    if seeds > 1:
        half = [Cell(m, sd, int(n)).half_width or 0.0
                for m, sd, n in zip(stats["mean"], stats["std"], stats["count"])]
        ax.bar(stats.index, 100 * stats["mean"], yerr=100 * np.asarray(half), capsize=4)
        ax.set_title(f"mean over unseen targets, {seeds} seeds, {SELECTION_LABELS[selection]}\n"
                     "(error bars: 95% t-interval over seeds)")
    else:  # one seed: no spread to draw
        ax.bar(stats.index, 100 * stats["mean"])
        ax.set_title(f"mean over unseen targets, 1 seed, {SELECTION_LABELS[selection]}")
    ax.set_ylabel(f"mean unseen-target {metric} (%)")
    fig.tight_layout()
    written += save_figure(fig, folder / "mean_unseen")
    plt.close(fig)
    return written
