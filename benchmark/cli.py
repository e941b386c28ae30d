"""The `benchmark` command line: run, table, compare, evaluate, datasets, methods, protocols, perf, ui."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import BenchmarkError
from .selection import LABELS as SELECTION_LABELS, RULES as SELECTION_RULES


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .data import DATASETS

    rows = []
    for name in DATASETS.names():
        reader = DATASETS.get(name)
        folder = reader.default_folder + "/" if reader.default_folder else (
            "(generated)" if name.startswith("synth5/") else "(--root)")
        rows.append([name, folder, ",".join(reader.splits), reader.description])
    print(tabulate(rows, headers=["name", "folder under --data-root", "splits", "layout"]))
    return 0


def _cmd_datasets_check(args: argparse.Namespace) -> int:
    from .data.check import check_dataset, format_report, write_manifest
    from .data.roots import dataset_root, parse_assignments

    root = dataset_root(args.name, root=args.root, data_root=args.data_root)
    options = parse_assignments(args.option, "--option")
    reports = check_dataset(args.name, root, args.split, skip_bad=args.skip_bad,
                            verify=not args.no_verify, options=options)
    print(format_report(args.name, reports))
    if args.manifest:
        n = write_manifest(Path(args.manifest), reports)
        print(f"manifest: {args.manifest} ({n} rows)")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .method_index import method_index

    print(tabulate(method_index(), headers=["method", "what it is"]))
    return 0


def derived_seeds(seeds: list[int], n: int) -> list[int]:
    """`n` seeds: the protocol's first, then the integers after its largest (deterministic, so a
    later --num-seeds 5 reuses every job of an earlier --num-seeds 3)."""
    if n < 1:
        raise BenchmarkError(f"--num-seeds {n}: must be 1 or more")
    out = list(dict.fromkeys(seeds))[:n]
    nxt = max(out) + 1 if out else 0
    while len(out) < n:
        out.append(nxt)
        nxt += 1
    return out


def with_sweep(protocol, assignment: str):
    """The protocol with `--sweep KEY=v1,v2,...` added to its sweep grid (values parse as TOML)."""
    import dataclasses

    from .protocol import parse_value
    from .sweep import Sweep

    key, sep, values = assignment.partition("=")
    if not sep or not values:
        raise BenchmarkError(f"--sweep {assignment!r}: expected KEY=v1,v2,... (e.g. hparams.cafe.sep_weight=0.5,1.5,5)")
    sweep = protocol.sweep_spec().with_grid(key.strip(), [parse_value(v.strip()) for v in values.split(",")])
    table = {**sweep.grid, **({"random": sweep.random, "seed": sweep.seed, "ranges": sweep.ranges} if sweep.random else {})}
    changed = dataclasses.replace(protocol, sweep=table)
    for point in sweep.points():
        changed.at(point)  # every value checked before any work
    return changed


def _cmd_run(args: argparse.Namespace) -> int:
    from .data.roots import parse_assignments
    from .executors import ExecutorOptions
    from .grid import run_grid
    from .jobs import plan_from
    from .protocol import load_protocol
    from .store import open_store

    overrides = parse_assignments(args.set, "--set")
    if args.seeds:
        overrides["seeds"] = "[" + args.seeds + "]"
    if args.sources:
        overrides["sources"] = "[" + ",".join(f'"{s.strip()}"' for s in args.sources.split(",")) + "]"
    protocol = load_protocol(args.protocol, overrides)
    for assignment in args.sweep or []:
        protocol = with_sweep(protocol, assignment)
    if args.num_seeds is not None:
        if args.seeds:
            raise BenchmarkError("--seeds and --num-seeds: give one of them")
        protocol.seeds = derived_seeds(protocol.seeds, args.num_seeds)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else protocol.methods
    plan = plan_from(protocol, args.data_root, parse_assignments(args.dataset_path, "--dataset-path"))
    options = ExecutorOptions(args.workers, args.jobs_per_gpu, args.ray_address)
    return run_grid(protocol, methods, plan, store=open_store(args.tracking_uri), executor=args.executor,
                    options=options, dry_run=args.dry_run, device=args.device, command=" ".join(sys.argv),
                    threads=args.threads, system_metrics_s=args.system_metrics_every)


def read_results(store, protocol: str, datasets: list[str], rule: str, metric: str, per_class: bool = False):
    """The results frame at the epochs `rule` picks: the final values for `last` (no history
    needed), else chosen from each job's per-epoch history (benchmark.selection)."""
    from .labels import CLASSES
    from .selection import check_rule, select

    if check_rule(rule) == "last":
        return store.results(protocol, datasets)
    metrics = {metric, "acc"} | ({"mean_class_acc", *(f"acc/{c}" for c in CLASSES)} if per_class else set())
    return select(store.history(protocol, sorted(metrics), datasets), rule)


def _sweep_table(args: argparse.Namespace, store, protocol_name: str, datasets: list[str]) -> int:
    import dataclasses

    from . import sweep_report, tables
    from .method import method_entry
    from .selection import select

    history = store.history(protocol_name, sorted({args.metric, "acc"}), datasets)
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

    from . import tables
    from .store import open_store

    store = open_store(args.tracking_uri)
    protocol_name = args.protocol or store.latest_protocol()
    sources, datasets, preferred = tables.protocol_layout(protocol_name)
    if not datasets:  # not a file in protocols/ (a path given to `run`): the one the grid logged
        logged = store.logged_protocol(protocol_name) or {}
        sources, datasets, preferred = (list(logged.get(k, [])) for k in ("sources", "datasets", "methods"))
    args.table = args.table or tables.default_table(sources)
    results = read_results(store, protocol_name, datasets, args.selection, args.metric,
                           per_class=args.table in ("perclass", "all"))
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
    names = ([name for name, layout in tables.layouts().items() if lodo or layout.kind != "leave_one_out"]
             if args.table == "all" else [args.table])
    outputs = []
    for name in names:
        built = tables.build_tables(name, results, args.metric, sources, datasets, methods, args.selection)
        if args.format == "csv":
            import pandas as pd

            outputs.append((name, pd.concat([tables.to_frame(t) for t in built]).to_csv(index=False)))
        else:
            outputs.append((name, "\n".join(tables.render(t, args.format, args.compare == "paper") for t in built)))
    header = f"{protocol_name}: {args.metric} (%), {SELECTION_LABELS[args.selection]}\n\n" if args.format == "md" else ""
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from . import compare, tables
    from .store import open_store

    store = open_store(args.tracking_uri)
    protocol_name = args.protocol or store.latest_protocol()
    _, datasets, _ = tables.protocol_layout(protocol_name)
    results = read_results(store, protocol_name, datasets, args.selection, args.metric)
    for warning in results.attrs["warnings"] + tables.mixed_environments(results):
        print(f"warning: {warning}", file=sys.stderr)
    order = tables.in_paper_order(datasets or sorted(set(results["target"])))
    comparison = compare.compare(results, args.a, args.b, args.metric, order)
    label = SELECTION_LABELS[args.selection]
    text = f"{protocol_name}: " + compare.render(comparison, label, tables.display)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
        for path in compare.figure(comparison, label, out.parent / out.stem, tables.display):
            print(f"wrote {path}")
    print(text)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from tabulate import tabulate

    from . import checkpoint
    from .data import decode_split
    from .data.roots import parse_assignments
    from .jobs import DataPlan
    from .metrics import evaluate
    from .store import open_store, schema
    from .trainer import pick_device

    store = open_store(args.tracking_uri)
    run = store.run(args.run)
    if run.status != "FINISHED":
        raise BenchmarkError(f"run {args.run} is {run.status}: only a FINISHED job run holds a trained method")
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        method, spec = checkpoint.load(store.download(args.run, checkpoint.FOLDER, Path(tmp)), device)
    plan = DataPlan(args.data_root, parse_assignments(args.dataset_path, "--dataset-path"),
                    {args.dataset: parse_assignments(args.option, "--option")})
    data = decode_split(plan.samples(args.dataset, args.split), spec["input_size"])
    ev = evaluate(data.labels, method.predict(data).argmax(1))
    print(f"{spec['method']} trained on {run.tags.get(schema.SOURCE)} (seed {run.tags.get(schema.SEED)}, run {args.run}) "
          f"on {args.dataset} {args.split}, {len(data)} images:")
    print(tabulate([[k, f"{100 * v:.2f}"] for k, v in (("acc", ev.acc), ("mean_class_acc", ev.mean_class_acc),
                                                        ("macro_f1", ev.macro_f1))],
                   headers=["metric", "%"], tablefmt="github", disable_numparse=True))
    if args.log:
        metrics = ev.as_metrics(schema.target_prefix(args.dataset))
        store.run_log(args.run).metrics(metrics, step=int(float(run.params.get("recipe.epochs", 0))))
        print(f"logged {len(metrics)} metrics to run {args.run}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .data.roots import parse_assignments
    from .explain import explain_runs, gradcam_figure
    from .figures import save_figure
    from .jobs import plan_from
    from .protocol import load_protocol
    from .store import open_store
    from .trainer import pick_device

    protocol = load_protocol(args.protocol)
    plan = plan_from(protocol, args.data_root, parse_assignments(args.dataset_path, "--dataset-path"))
    methods = [m.strip() for m in args.methods.split(",")]
    panels, rows = explain_runs(open_store(args.tracking_uri), protocol.name, methods, args.source, args.seed,
                                plan.samples(args.target, args.split), args.images, args.image_seed, args.explain,
                                pick_device(args.device), skip_bad=plan.skip_bad)
    which = "labelled" if args.explain == "label" else "predicted"
    fig = gradcam_figure(panels, rows,
                         f"GradCAM (logit of the {which} class, backbone's last block) of {len(rows)} {args.target} "
                         f"{args.split} images (image seed {args.image_seed}); models trained on {args.source}, "
                         f"seed {args.seed}, last epoch")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = save_figure(fig, out.parent / out.name.removesuffix(".png").removesuffix(".pdf"))
    for panel in panels:
        print(f"{panel.method}: run {panel.run_id}, {int((panel.predicted == panel.data.labels[rows]).sum())}/{len(rows)} "
              "of these images right")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _cmd_perf(args: argparse.Namespace) -> int:
    from .perf import main_perf

    overrides = {}
    if args.methods:
        overrides["methods"] = [m.strip() for m in args.methods.split(",")]
    if args.precisions:
        overrides["precisions"] = [p.strip() for p in args.precisions.split(",")]
    if args.eval_methods:
        overrides["eval_methods"] = [m.strip() for m in args.eval_methods.split(",")]
    if args.pack:
        try:
            overrides["pack"] = [int(n) for n in args.pack.split(",")]
        except ValueError:
            raise BenchmarkError(f"--pack {args.pack!r}: expected numbers of processes, e.g. 4,8") from None
    if args.compile:
        overrides["compile"] = True
    if args.variant_methods is not None:
        overrides["variant_methods"] = [m.strip() for m in args.variant_methods.split(",") if m.strip()]
    if args.loop_only:
        overrides["loop_only"] = True
    if args.pack_variants:
        from .perf_loop import LOOP_VARIANTS

        overrides["pack_variants"] = [v.strip() for v in args.pack_variants.split(",")]
        unknown = [v for v in overrides["pack_variants"] if v not in LOOP_VARIANTS]
        if unknown:
            raise BenchmarkError(f"--pack-variants: unknown {', '.join(unknown)} (known: {', '.join(LOOP_VARIANTS)})")
    for key in ("size", "batch_size", "steps", "backbone", "encoder", "loop_steps", "workers", "matmul_n"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return main_perf(args.quick, overrides, args.device, args.json, args.scale_images)


def _cmd_protocols(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .protocol_files import protocol_rows

    rows = protocol_rows()
    print(tabulate(rows, headers=["protocol", "methods", "sources", "targets", "seeds", "epochs", "description"]))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from .store import default_uri

    uri = args.tracking_uri or default_uri()
    if uri.startswith("jsonl:"):
        raise BenchmarkError(f"--tracking-uri {uri}: the UI shows MLflow stores only (a JSON-lines store is a folder "
                             "of text files to read as they are)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port)]
    link = f"http://{args.host}:{args.port}"
    try:  # the runs of the protocol with the newest finished job, if any
        from .store import open_store, schema

        store = open_store(uri)
        # (an experiment made by an older version gets its view tags here)
        link += f"/#/experiments/{store.experiment(store.latest_protocol())}/runs?{schema.UI_RUNS_QUERY}"
    except BenchmarkError:
        pass
    print(f"MLflow UI on {link} for {uri}", flush=True)
    # Become the MLflow process (no child in between): `kill <pid>` and Ctrl-C reach it, and it
    # passes them on to its server, so nothing is left holding the port.
    os.execv(sys.executable, command)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark",
        description="Generalizable facial expression recognition: train on one dataset, test on all five.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run methods on a protocol's source x target grid, logging to MLflow")
    run.add_argument("--protocol", default="synth5", help="protocol name in protocols/ or a .toml path (default synth5)")
    run.add_argument("--methods", help="comma-separated method names (default: the protocol's)")
    run.add_argument("--seeds", help="comma-separated seeds (overrides the protocol's)")
    run.add_argument("--num-seeds", type=int, metavar="N", help="N seeds: the protocol's, then the next integers "
                     "after its largest")
    run.add_argument("--sources", help="comma-separated source datasets (overrides the protocol's)")
    run.add_argument("--sweep", action="append", metavar="KEY=V1,V2,...",
                     help="sweep a hyperparameter over these values, e.g. hparams.cafe.sep_weight=0.5,1.5,5 "
                     "(repeatable: the grid of all combinations)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a protocol field, e.g. recipe.epochs=2 or backbone.path=FILE (repeatable)")
    run.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    run.add_argument("--dataset-path", action="append", metavar="NAME=DIR", help="one dataset's folder (repeatable)")
    run.add_argument("--tracking-uri", help="result store: an MLflow tracking URI or jsonl:FOLDER (default "
                     "$MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    run.add_argument("--executor", choices=["local", "pool", "ray"], default="local",
                     help="local: one job at a time in this process (default); pool: worker processes on this "
                     "machine, one GPU each when there are several; ray: Ray tasks")
    run.add_argument("--workers", type=int, help="pool: worker processes (default --jobs-per-gpu x GPUs, at least 1)")
    run.add_argument("--ray-address", help="join a running Ray cluster (default: start a local one)")
    run.add_argument("--jobs-per-gpu", type=int, default=1, help="jobs sharing one GPU: N worker processes per GPU (local or pool), "
                     "1/N of a GPU per task with Ray (default 1)")
    run.add_argument("--threads", type=int, help="torch threads per job, the same in every executor (default: this "
                     "machine's cores / --jobs-per-gpu); recorded as env.threads: numbers depend on it")
    run.add_argument("--system-metrics-every", type=float, metavar="SECONDS",
                     help="sample CPU, memory, disk, network and GPU use into each job's run (MLflow system/ "
                     "metrics) every SECONDS; 0: off (default 10)")
    run.add_argument("--device", help="torch device for local jobs (default cuda when present, else cpu)")
    run.add_argument("--dry-run", action="store_true", help="list the jobs and whether each is FINISHED; run nothing")
    run.set_defaults(func=_cmd_run)
    table = sub.add_parser("table", help="build the paper's tables (markdown, LaTeX, CSV) from MLflow runs")
    table.add_argument("--protocol", help="experiment to read (default: the most recent with finished runs)")
    table.add_argument("--table", help="table1..table5, perclass, lodo, all, or sweep (accuracy against swept "
                       "values, the paper's Fig. 3; default table1, lodo for a leave-one-domain-out protocol)")
    table.add_argument("--out", help="write here (with --table all: one file per table beside it) plus the figures")
    table.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    table.add_argument("--compare", choices=["paper"], help="put the paper's number and the difference beside ours")
    table.add_argument("--metric", choices=["acc", "mean_class_acc", "macro_f1"], default="acc")
    table.add_argument("--selection", choices=list(SELECTION_RULES), default="last",
                       help="the epoch each job is read at: last (default), source_val (best on the source's "
                       "validation split), source_test (best on the source's test set, as the authors' code), "
                       "oracle (best on each target: an upper bound)")
    table.add_argument("--tracking-uri", help="result store to read (default as `run`)")
    table.set_defaults(func=_cmd_table)
    cmp = sub.add_parser("compare", help="paired comparison of two methods over the cells both have")
    cmp.add_argument("a", help="method A")
    cmp.add_argument("b", help="method B (the difference is A - B)")
    cmp.add_argument("--protocol", help="experiment to read (default: the most recent with finished runs)")
    cmp.add_argument("--selection", choices=list(SELECTION_RULES), default="last", help="as for `table`")
    cmp.add_argument("--metric", choices=["acc", "mean_class_acc", "macro_f1"], default="acc")
    cmp.add_argument("--out", help="write the markdown here, and the per-cell figure beside it (.png, .pdf)")
    cmp.add_argument("--tracking-uri", help="result store to read (default as `run`)")
    cmp.set_defaults(func=_cmd_compare)
    ev = sub.add_parser("evaluate", help="test a finished job's trained method on a dataset, without retraining")
    ev.add_argument("--run", required=True, help="the job's run id (printed by `run`, shown in the UI)")
    ev.add_argument("--dataset", required=True, help="reader name, e.g. ferplus or synth5/wild")
    ev.add_argument("--split", default="test", help="split to test on (default test)")
    ev.add_argument("--option", action="append", metavar="KEY=VALUE", help="reader option (repeatable)")
    ev.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    ev.add_argument("--dataset-path", action="append", metavar="NAME=DIR", help="one dataset's folder (repeatable)")
    ev.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    ev.add_argument("--log", action="store_true", help="also log the metrics into the run (test/<dataset>/...)")
    ev.add_argument("--tracking-uri", help="result store (default as `run`)")
    ev.set_defaults(func=_cmd_evaluate)
    ex = sub.add_parser("explain", help="GradCAM maps of trained runs on the same target images, side by side "
                        "(the paper's Fig. 4)")
    ex.add_argument("--methods", required=True, help="comma-separated methods, one row each (e.g. eac,cafe)")
    ex.add_argument("--source", required=True, help="the dataset the runs were trained on (e.g. rafdb)")
    ex.add_argument("--target", required=True, help="the dataset whose images are explained (e.g. ferplus)")
    ex.add_argument("--protocol", default="synth5", help="the protocol (experiment) the runs belong to (default synth5)")
    ex.add_argument("--seed", type=int, default=0, help="the runs' training seed (default 0)")
    ex.add_argument("--split", default="test", help="the target's split (default test)")
    ex.add_argument("--images", type=int, default=8, help="how many images (default 8)")
    ex.add_argument("--image-seed", type=int, default=0, help="seed of the draw of images (default 0)")
    ex.add_argument("--explain", choices=["label", "predicted"], default="label",
                    help="the logit explained: the image's labelled class (default) or each model's prediction")
    ex.add_argument("--out", default="results/gradcam.png", help="figure path; a .pdf is written beside the .png "
                    "(default results/gradcam.png)")
    ex.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    ex.add_argument("--dataset-path", action="append", metavar="NAME=DIR", help="one dataset's folder (repeatable)")
    ex.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    ex.add_argument("--tracking-uri", help="result store (default as `run`)")
    ex.set_defaults(func=_cmd_explain)
    methods = sub.add_parser("methods", help="list the registered methods")
    methods.set_defaults(func=_cmd_methods)
    protocols = sub.add_parser("protocols", help="list the protocol files")
    protocols.set_defaults(func=_cmd_protocols)
    ui = sub.add_parser("ui", help="start the MLflow UI on the results store (127.0.0.1 by default)")
    ui.add_argument("--tracking-uri", help="store to show (default as `run`)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_cmd_ui)

    perf = sub.add_parser("perf", help="measure training and evaluation throughput on this machine")
    perf.add_argument("--quick", action="store_true", help="a tiny configuration that runs in seconds (CI)")
    perf.add_argument("--methods", help="comma-separated methods (default erm,cafe,clip_ft)")
    perf.add_argument("--size", type=int, help="input size (default 224)")
    perf.add_argument("--batch-size", type=int, help="batch size (default 32)")
    perf.add_argument("--steps", type=int, help="timed training steps per method and data path (default 20)")
    perf.add_argument("--backbone", help="NAME:WEIGHTS (default resnet18:none)")
    perf.add_argument("--encoder", help="frozen encoder spec (default openclip:ViT-B-32:random, the paper's "
                      "architecture; random weights time the same as the real ones)")
    perf.add_argument("--precisions", help="comma-separated recipe.precision values the harness path runs at "
                      "(default auto,bf16)")
    perf.add_argument("--eval-methods", help="comma-separated methods whose evaluation of five test sets is "
                      "timed cold and warm (default cafe,clip_probe)")
    perf.add_argument("--scale-images", type=int, default=0, metavar="N",
                      help="instead: train erm one epoch over N synthetic images at --size px and report the "
                      "peak resident memory (the first of --precisions is used)")
    perf.add_argument("--loop-steps", type=int, help="batches in the timed epoch of the training loop (default 100)")
    perf.add_argument("--workers", type=int, help="DataLoader workers of the per-sample path (default: one per core)")
    perf.add_argument("--matmul-n", type=int, help="side of the timed matmul (default 8192 on CUDA, else 2048)")
    perf.add_argument("--compile", action="store_true", help="also time the training loop with torch.compile")
    perf.add_argument("--pack", metavar="N,N,...", help="also time N processes training at once on the device")
    perf.add_argument("--pack-variants", metavar="NAME,...", help="recipe variants of the packed runs "
                      "(perf_loop.LOOP_VARIANTS; default: default)")
    perf.add_argument("--variant-methods", metavar="NAME,...", help="methods whose training-loop variants are "
                      "timed (default cafe; empty for none)")
    perf.add_argument("--loop-only", action="store_true", help="only the training-loop variants and packing")
    perf.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    perf.add_argument("--json", help="also write the report as JSON here")
    perf.set_defaults(func=_cmd_perf)

    datasets = sub.add_parser("datasets", help="list dataset readers, or check a dataset on disk")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    dlist = dsub.add_parser("list", help="the readers and the folder each expects under --data-root")
    dlist.set_defaults(func=_cmd_datasets_list)
    check = dsub.add_parser("check", help="read every split, count each class, report what was dropped and why")
    check.add_argument("name", help="reader name, e.g. rafdb or synth5/studio (see `datasets list`)")
    check.add_argument("--root", help="the dataset's own folder")
    check.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    check.add_argument("--split", action="append", choices=["train", "val", "test"],
                       help="check only this split (repeatable; default all the reader has)")
    check.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="reader option, e.g. variant=original for rafdb (repeatable)")
    check.add_argument("--skip-bad", action="store_true",
                       help="drop rows whose image is missing or unreadable and count them, instead of failing")
    check.add_argument("--no-verify", action="store_true", help="do not decode every image (faster)")
    check.add_argument("--manifest", metavar="FILE", help="write a CSV split,path,label of every kept sample")
    check.set_defaults(func=_cmd_datasets_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:  # MLflow's INFO lines (creating tables, ...) are noise to a user; -v shows them
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # per checkpoint read back
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, not a traceback; runs were closed as KILLED on the way out
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
