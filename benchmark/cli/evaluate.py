"""`benchmark evaluate`: a finished job's trained method tested on another dataset, without
retraining."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import BenchmarkError


def _cmd_evaluate(args: argparse.Namespace) -> int:
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
    plan = DataPlan(args.data_root, parse_assignments(args.dataset_path, "--dataset-path"),
                    {args.dataset: parse_assignments(args.option, "--option")})
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
