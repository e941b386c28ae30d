"""`benchmark adapt`: test-time adaptation of every FINISHED trained model of a protocol, on each
of its targets, without retraining (benchmark.run.adapt)."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import BenchmarkError


def run_adapt(args: argparse.Namespace) -> int:
    """adapt's work for parsed flags (also `benchmark evaluate --protocol`'s, with the TTA method none)."""
    from ..data.roots import parse_assignments
    from ..jobs.plan import plan_from
    from ..jobs.protocol import check_slices, load_protocol
    from ..run.adapt import adapt_grid
    from ..store import open_store
    from ..tta.evaluation import tta_specs
    from ..tta.stream import StreamSettings

    sets = parse_assignments(args.set, "--set")
    tta_sets = {k: v for k, v in sets.items() if k.startswith("tta.")}
    overrides = {k: v for k, v in sets.items() if not k.startswith("tta.")}
    if args.seeds:
        overrides["seeds"] = "[" + args.seeds + "]"
    if args.sources:
        overrides["sources"] = "[" + ",".join(f'"{s.strip()}"' for s in args.sources.split(",")) + "]"
    protocol = load_protocol(args.protocol, overrides)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else protocol.methods
    defaults = dict(protocol.tta)  # its keys checked when the protocol loaded
    names = [t.strip() for t in args.tta.split(",") if t.strip()] if args.tta else defaults.pop("methods", [])
    if not names:
        raise BenchmarkError("--tta: name at least one TTA method (benchmark adapt --list shows them; a protocol's "
                             "[tta] methods are the default)")
    specs = tta_specs(names, tta_sets)
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else defaults.get(key)
              for key in ("batch_size", "order", "dirichlet_alpha", "reset", "calibrate")}
    calibrate = chosen.pop("calibrate") or "none"
    stream = StreamSettings(**{k: v for k, v in chosen.items() if v is not None})
    slices = [s.strip() for s in args.slices.split(",") if s.strip()] if args.slices else []
    check_slices(slices, protocol.datasets, "--slices")
    plan = plan_from(protocol, args.data_root, parse_assignments(args.dataset_path, "--dataset-path"))
    store = open_store(args.tracking_uri)
    summary = adapt_grid(protocol, methods, plan, specs, stream, store=store, calibrate=calibrate, slices=slices,
                         device=args.device, command=" ".join(sys.argv))
    print(f"adapt: {summary.done} evaluation(s) run, {summary.skipped} FINISHED before, {summary.refused} not "
          f"applicable" + (f"; {summary.jobs_missing} job(s) of the protocol have no FINISHED run to adapt "
                           "(benchmark run trains them)" if summary.jobs_missing else ""))
    table = "slices" if slices else "tta"
    print(f"table: benchmark table --protocol {protocol.name} --table {table}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ..tta import methods as _builtin  # noqa: F401
    from ..tta.base import TTA_METHODS

    for name in TTA_METHODS.names():
        print(f"{name:10s} {TTA_METHODS.get(name).description}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    ad = sub.add_parser("adapt", help="test-time adaptation of a protocol's trained models on their targets "
                        "(no retraining): norm, tent, t3a, sar, eta, eata, lame, shot_im")
    ad.add_argument("--protocol", default="synth5", help="the protocol whose trained models to adapt (default synth5)")
    ad.add_argument("--methods", help="comma-separated trained methods (default: the protocol's)")
    ad.add_argument("--tta", help="comma-separated TTA methods, e.g. norm,tent,t3a (none: the plain model through "
                    "the same stream; default: the protocol's [tta] methods)")
    ad.add_argument("--list", action="store_true", help="list the TTA methods and exit")
    ad.add_argument("--seeds", help="comma-separated seeds (as given to `run`)")
    ad.add_argument("--sources", help="comma-separated sources (as given to `run`)")
    ad.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a TTA option, tta.<method>.<option>=VALUE (e.g. tta.tent.lr=2.5e-4), or a protocol field "
                    "as given to `run` (so the same jobs are found); repeatable")
    ad.add_argument("--batch-size", type=int, help="test batch size of the stream (default: the protocol's [tta], "
                    "else 64)")
    ad.add_argument("--order", choices=["iid", "dirichlet"],
                    help="stream order: iid (seeded shuffle, default) or dirichlet (TTAB's label-correlated stream)")
    ad.add_argument("--dirichlet-alpha", type=float, help="dirichlet order's concentration (default 0.1)")
    ad.add_argument("--reset", choices=["per_domain", "never"],
                    help="per_domain: every target starts from the trained model (default); never: carried "
                    "across the targets in order (continual)")
    ad.add_argument("--calibrate", choices=["none", "temperature"],
                    help="temperature: scale every target's probabilities by a T fitted on the source's validation "
                    "split (recorded and hashed)")
    ad.add_argument("--slices", help="comma-separated slices of the targets to adapt and test on instead of the "
                    "targets, e.g. synth5/wild:occluded,synth5/wild:fog@3 (benchmark datasets slices lists them)")
    ad.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    ad.add_argument("--dataset-path", action="append", metavar="NAME=DIR", help="one dataset's folder (repeatable)")
    ad.add_argument("--tracking-uri", help="result store (default as `run`)")
    ad.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    ad.set_defaults(func=lambda args: _cmd_list(args) if args.list else run_adapt(args))
