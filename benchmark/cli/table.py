"""`benchmark table` and `benchmark compare`: the paper's tables and paired comparisons from the
store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import BenchmarkError
from ..report.selection import LABELS as SELECTION_LABELS, RULES as SELECTION_RULES

# What `--metric` may name: the accuracies, and the calibration of the probabilities.
METRICS = ("acc", "mean_class_acc", "macro_f1", "ece", "nll", "brier")


def read_results(store, protocol: str, datasets: list[str], rule: str, metric: str, per_class: bool = False):
    """The results frame at the epochs `rule` picks: the final values for `last` (no history
    needed), else chosen from each job's per-epoch history (benchmark.report.selection)."""
    from ..core.labels import CLASSES
    from ..report.selection import check_rule, select

    if check_rule(rule) == "last":
        return store.results(protocol, datasets)
    metrics = {metric, "acc"} | ({"mean_class_acc", *(f"acc/{c}" for c in CLASSES)} if per_class else set())
    return select(store.history(protocol, sorted(metrics), datasets), rule)


def with_tta(store, results, protocol: str, datasets: list[str], rule: str):
    """`results` and the protocol's test-time adaptation evaluations, named "<method>+<tta>" (the
    stream without adaptation, "+none", is left out, whatever its batches: the plain runs are that
    column; with temperature scaling it is a column of its own)."""
    import pandas as pd

    if rule != "last":
        raise BenchmarkError(f"--selection {rule}: test-time adaptation evaluates the trained (last) model only; "
                             "use --selection last")
    adapted = store.tta_results(protocol, datasets)
    if adapted.empty:
        raise BenchmarkError(f"no test-time adaptation results for protocol {protocol!r} in {store.uri} "
                             "(benchmark adapt --tta ... makes them)")
    plain = adapted["method"].str.contains(r"\+none(?:\[[^\]]*\])?$") & ~adapted["method"].str.contains("temperature")
    adapted = adapted[~plain]
    frame = pd.concat([results, adapted], ignore_index=True)
    frame.attrs["warnings"] = results.attrs.get("warnings", [])
    return frame


def with_slices(store, results, protocol: str, datasets: list[str], rule: str):
    """`results` and the protocol's plain slice evaluations (`benchmark evaluate --protocol`: the TTA
    method none on slices), named as their trained methods."""
    import pandas as pd

    if rule != "last":
        raise BenchmarkError(f"--selection {rule}: slices are evaluated on the trained (last) model only; "
                             "use --selection last")
    adapted = store.tta_results(protocol, datasets)
    plain = adapted["method"].str.contains(r"\+none$") & adapted["target"].str.contains(":", regex=False)
    sliced = adapted[plain].assign(method=adapted.loc[plain, "method"].str.removesuffix("+none"))
    if sliced.empty:
        raise BenchmarkError(f"no slice evaluations for protocol {protocol!r} in {store.uri} "
                             "(benchmark evaluate --protocol ... --slices ... makes them)")
    frame = pd.concat([results, sliced], ignore_index=True)
    frame.attrs["warnings"] = results.attrs.get("warnings", [])
    return frame


def _sweep_table(args: argparse.Namespace, store, protocol_name: str, datasets: list[str]) -> int:
    import dataclasses

    from ..report import sweep_report, tables
    from ..training.plugins import method_entry
    from ..report.selection import select

    history = store.history(protocol_name, sorted({args.metric, "acc"}), datasets)
    history["method"] = history["method"].map(lambda label: tables.split_recipe(label)[0])  # a swept recipe is a point, not a method
    chosen = select(history, args.selection)
    chosen = chosen[chosen["sweep"] != ""]
    if chosen.empty:
        raise BenchmarkError(f"no swept jobs in {protocol_name!r}: run a protocol with [sweep] or `run --sweep`")
    label = SELECTION_LABELS[args.selection]
    summary = sweep_report.point_summary(chosen, history, args.metric)
    text = f"{protocol_name}: {args.metric} (%)\n\n" + sweep_report.render(summary, sweep_report.picks(summary), label)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
        defaults = {m: dataclasses.asdict(method_entry(m).hparams()) for m in sorted(set(chosen["method"]))}
        order = tables.in_paper_order(datasets or sorted(set(chosen["target"])))
        for path in sweep_report.figures(chosen, args.metric, defaults, out.parent, label, tables.display, order):
            print(f"wrote {path}")
    print(text)
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..report import tables
    from ..store import open_store

    store = open_store(args.tracking_uri)
    protocol_name = args.protocol or store.latest_protocol()
    sources, datasets, preferred = tables.protocol_layout(protocol_name)
    if not datasets:  # not a file in protocols/ (a path given to `run`): the one the grid logged
        logged = store.logged_protocol(protocol_name) or {}
        sources, datasets, preferred = (list(logged.get(k, [])) for k in ("sources", "datasets", "methods"))
    args.table = args.table or tables.default_table(sources)
    results = read_results(store, protocol_name, datasets, args.selection, args.metric,
                           per_class=args.table in ("perclass", "all"))
    if args.table == "tta":
        results = with_tta(store, results, protocol_name, datasets, args.selection)
    if args.table in tables.SLICE_KINDS:
        results = with_slices(store, results, protocol_name, datasets, args.selection)
    if results.empty:
        raise BenchmarkError(f"no FINISHED runs for protocol {protocol_name!r} in {store.uri}")
    for warning in results.attrs["warnings"] + tables.mixed_environments(results):
        print(f"warning: {warning}", file=sys.stderr)
    if not datasets:
        datasets = sorted(set(results["target"]))
        sources = sorted(set(results["source"]))
    present = list(dict.fromkeys(results["method"]))
    methods = [m for m in preferred if m in present] + [m for m in present if m not in preferred]
    if args.table == "sweep":
        return _sweep_table(args, store, protocol_name, datasets)
    lodo = tables.default_table(sources) == "lodo"  # the leave-one-out layout only for such grids
    names = ([name for name, layout in tables.layouts().items() if _belongs_to_all(layout, lodo, present)]
             if args.table == "all" else [args.table])
    outputs = []
    for name in names:
        if name in tables.SLICE_KINDS:
            from ..report import slices

            built = slices.build_tables(name, results, args.metric, methods, args.baseline)
        else:
            built = tables.build_tables(name, results, args.metric, sources, datasets, methods, args.selection)
        if name == "tta" and (cost := tables.tta_cost_note(store.tta_costs(protocol_name))):
            built[0].notes.append(cost)
        if args.format == "csv":
            import pandas as pd

            outputs.append((name, pd.concat([tables.to_frame(t) for t in built]).to_csv(index=False)))
        else:
            outputs.append((name, "\n".join(tables.render(t, args.format, args.compare == "paper") for t in built)))
    from ..store import schema

    header = f"{protocol_name}: {args.metric} ({schema.metric_unit(args.metric)}), {SELECTION_LABELS[args.selection]}\n\n" if args.format == "md" else ""
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for name, text in outputs:
            path = out if len(outputs) == 1 else out.with_name(f"{name}{out.suffix or '.md'}")
            path.write_text(header + text)
            print(f"wrote {path}")
        for fig in tables.write_figures(results, args.metric, sources, datasets, methods, out.parent, args.selection):
            print(f"wrote {fig}")
    for _, text in outputs:
        print(header + text)
    return 0


def _belongs_to_all(layout, lodo: bool, present: list[str]) -> bool:
    """Whether `--table all` writes this table: leave-one-out only for such grids, the adaptation
    table when one of its rows beyond the paper's own ran, the recipes table when a method wore
    a recipe."""
    from ..report.tables import SLICE_KINDS, paper_numbers

    if layout.kind == "leave_one_out":
        return lodo
    if layout.kind == "adaptation":
        in_paper = set(paper_numbers()["method"])
        return any(m in layout.methods and m not in in_paper for m in present)
    if layout.kind == "recipes":
        return any("+" in m for m in present)
    if layout.kind in ("tta", *SLICE_KINDS):  # only on request: their results are other runs, read for them alone
        return False
    return True


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..report import compare, tables
    from ..store import open_store

    store = open_store(args.tracking_uri)
    protocol_name = args.protocol or store.latest_protocol()
    _, datasets, _ = tables.protocol_layout(protocol_name)
    results = read_results(store, protocol_name, datasets, args.selection, args.metric)
    if args.slices or args.worst_group:  # on the slice evaluations instead of the targets
        from ..report.slices import worst_groups

        merged = with_slices(store, results, protocol_name, datasets, args.selection)
        results = merged[merged["target"].str.contains(":", regex=False)]
        if args.worst_group:
            results = worst_groups(results)
        results.attrs["warnings"] = merged.attrs["warnings"]
    elif args.selection == "last" and "+" in args.a + args.b:  # a test-time adaptation may be named (cafe+tent)
        adapted = store.tta_results(protocol_name, datasets)
        if not adapted.empty:
            results = with_tta(store, results, protocol_name, datasets, args.selection)
    for warning in results.attrs["warnings"] + tables.mixed_environments(results):
        print(f"warning: {warning}", file=sys.stderr)
    order = tables.in_paper_order(datasets or sorted(set(results["target"])))
    comparison = compare.compare(results, args.a, args.b, args.metric, order)
    label = SELECTION_LABELS[args.selection]
    from ..store import schema

    mde = None if args.mde is None else args.mde / schema.metric_scale(args.metric)
    text = f"{protocol_name}: " + compare.render(comparison, label, tables.display, mde=mde)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
        for path in (compare.figure(comparison, label, out.parent / out.stem, tables.display)
                     + compare.profile_figure(comparison, label, out.parent / f"{out.stem}_profile")):
            print(f"wrote {path}")
    print(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    table = sub.add_parser("table", help="build the paper's tables (markdown, LaTeX, CSV) from MLflow runs")
    table.add_argument("--protocol", help="experiment to read (default: the most recent with finished runs)")
    table.add_argument("--table", help="table1..table5, perclass, lodo, fair (methods x backbones), recipes (methods x DG recipes), adaptation (the ways of adapting CLIP), tta (methods x test-time adaptations, from benchmark adapt), slices, groups, corruptions (from benchmark evaluate --protocol), all, or sweep (accuracy against swept "
                       "values, the paper's Fig. 3; default table1, lodo for a leave-one-domain-out protocol)")
    table.add_argument("--baseline", help="--table corruptions: the method whose errors the mCE is relative to "
                       "(ImageNet-C's AlexNet role; default: none, no mCE column)")
    table.add_argument("--out", help="write here (with --table all: one file per table beside it) plus the figures")
    table.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    table.add_argument("--compare", choices=["paper"], help="put the paper's number and the difference beside ours")
    table.add_argument("--metric", choices=METRICS, default="acc",
                       help="acc (default), mean_class_acc, macro_f1, or calibration: ece, nll, brier (lower is better)")
    table.add_argument("--selection", choices=list(SELECTION_RULES), default="last",
                       help="the epoch each job is read at: last (default), source_val (best on the source's "
                       "validation split), source_test (best on the source's test set, as the authors' code), "
                       "oracle (best on each target: an upper bound)")
    table.add_argument("--tracking-uri", help="result store to read (default as `run`)")
    table.set_defaults(func=_cmd_table)
    cmp = sub.add_parser("compare", help="paired comparison of two methods over the cells both have")
    cmp.add_argument("a", help="method A, or METHOD@BACKBONE where the method ran on several backbones")
    cmp.add_argument("b", help="method B (the difference is A - B), or METHOD@BACKBONE")
    cmp.add_argument("--protocol", help="experiment to read (default: the most recent with finished runs)")
    cmp.add_argument("--selection", choices=list(SELECTION_RULES), default="last", help="as for `table`")
    cmp.add_argument("--metric", choices=METRICS, default="acc",
                     help="acc (default), mean_class_acc, macro_f1, or ece, nll, brier (lower is better: P(A < B))")
    cmp.add_argument("--mde", type=float, metavar="POINTS", help="also say how many seeds per source would detect "
                     "an unseen-domain difference of POINTS percentage points with 80%% power")
    cmp.add_argument("--out", help="write the markdown here, the per-cell figure and the performance profiles "
                     "(<name>_profile) beside it (.png, .pdf)")
    cmp.add_argument("--slices", action="store_true", help="compare on the slice evaluations (benchmark evaluate "
                     "--protocol) instead of the targets: a row per slice, the unit still the trained model")
    cmp.add_argument("--worst-group", action="store_true", help="compare each model's worst group per (dataset, "
                     "attribute) of the group slices (e.g. synth5/studio:skin=worst)")
    cmp.add_argument("--tracking-uri", help="result store to read (default as `run`)")
    cmp.set_defaults(func=_cmd_compare)
