"""`benchmark evaluate`: trained methods tested on data they were not tested on, without
retraining: every FINISHED trained model of a protocol on slices of its targets (`--protocol`,
recorded and resumable, as `benchmark adapt` with the TTA method none), or one finished job run on
another dataset (`--run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import BenchmarkError


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.protocol:
        return _evaluate_protocol(args)
    if not args.run or not args.dataset:
        raise BenchmarkError("evaluate: give --protocol P (every trained model on the protocol's slices) or "
                             "--run RUN_ID --dataset NAME (one run on one dataset)")
    return _evaluate_run(args)


def _evaluate_protocol(args: argparse.Namespace) -> int:
    from ..jobs.protocol import load_protocol
    from .adapt import run_adapt

    slices = args.slices or ",".join(load_protocol(args.protocol).slices)
    if not slices:
        raise BenchmarkError(f"evaluate --protocol {args.protocol}: no slices to evaluate; give --slices or a "
                             "`slices` list in the protocol (benchmark datasets slices lists them)")
    return run_adapt(argparse.Namespace(
        protocol=args.protocol, methods=args.methods, tta="none", seeds=args.seeds, sources=args.sources,
        set=args.set, batch_size=None, order=None, dirichlet_alpha=None, reset=None, calibrate=None, slices=slices,
        data_root=args.data_root, dataset_path=args.dataset_path, tracking_uri=args.tracking_uri, device=args.device))


def _evaluate_run(args: argparse.Namespace) -> int:
    import tempfile

    from tabulate import tabulate

    from ..training import checkpoint
    from ..data import decode_split
    from ..data.roots import parse_assignments
    from ..jobs.plan import DataPlan
    from ..training.metrics import evaluate
    from ..store import open_store, schema
    from ..training.trainer import pick_device

    store = open_store(args.tracking_uri)
    run = store.run(args.run)
    if run.status != "FINISHED":
        raise BenchmarkError(f"run {args.run} is {run.status}: only a FINISHED job run holds a trained method")
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:  # the run's model's checkpoint, or the run's own (older stores)
        method, spec = checkpoint.load(store.checkpoint(args.run, Path(tmp)), device)
    from ..data.slices import base_dataset

    plan = DataPlan(args.data_root, parse_assignments(args.dataset_path, "--dataset-path"),
                    {base_dataset(args.dataset): parse_assignments(args.option, "--option")})  # a slice: its dataset's
    data = decode_split(plan.samples(args.dataset, args.split), spec["input_size"])
    ev = evaluate(data.labels, probs=method.predict(data))
    print(f"{spec['method']} trained on {run.tags.get(schema.SOURCE)} (seed {run.tags.get(schema.SEED)}, run {args.run}) "
          f"on {args.dataset} {args.split}, {len(data)} images:")
    print(tabulate([[k, f"{100 * v:.2f}"] for k, v in (("acc", ev.acc), ("mean_class_acc", ev.mean_class_acc),
                                                        ("macro_f1", ev.macro_f1), ("ece", ev.calibration.ece),
                                                        ("brier", ev.calibration.brier))],
                   headers=["metric", "%"], tablefmt="github", disable_numparse=True))
    print(f"NLL {ev.calibration.nll:.4f} nats per image")
    if args.log:
        metrics = ev.as_metrics(schema.target_prefix(args.dataset))
        store.run_log(args.run).metrics(metrics, step=int(float(run.params.get("recipe.epochs", 0))))
        print(f"logged {len(metrics)} metrics to run {args.run}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="test trained methods on slices of their targets (--protocol) or one "
                        "finished job's on a dataset (--run), without retraining")
    ev.add_argument("--protocol", help="every FINISHED trained model of this protocol, on its slices (recorded; "
                    "run again, nothing is redone)")
    ev.add_argument("--slices", help="with --protocol: comma-separated slices, e.g. synth5/wild:occluded,"
                    "synth5/wild:fog@3 (default: the protocol's `slices`)")
    ev.add_argument("--methods", help="with --protocol: comma-separated trained methods (default: the protocol's)")
    ev.add_argument("--seeds", help="with --protocol: comma-separated seeds (as given to `run`)")
    ev.add_argument("--sources", help="with --protocol: comma-separated sources (as given to `run`)")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="with --protocol: a protocol field as given to `run` (so the same jobs are found)")
    ev.add_argument("--run", help="a job's run id (printed by `run`, shown in the UI)")
    ev.add_argument("--dataset", help="with --run: reader name or slice, e.g. ferplus, synth5/wild:occluded")
    ev.add_argument("--split", default="test", help="split to test on (default test)")
    ev.add_argument("--option", action="append", metavar="KEY=VALUE", help="reader option (repeatable)")
    ev.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $FER_DATA_ROOT)")
    ev.add_argument("--dataset-path", action="append", metavar="NAME=DIR", help="one dataset's folder (repeatable)")
    ev.add_argument("--device", help="torch device (default cuda when present, else cpu)")
    ev.add_argument("--log", action="store_true", help="also log the metrics into the run (test/<dataset>/...)")
    ev.add_argument("--tracking-uri", help="result store (default as `run`)")
    ev.set_defaults(func=_cmd_evaluate)
