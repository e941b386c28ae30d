"""`benchmark reliability`: the reliability diagram of a trained method on one target, plain and
adapted at test time, its seeds pooled; computed again from the stored models (no retraining)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import BenchmarkError


def _cmd_reliability(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from ..data.cache import decode_split
    from ..data.roots import parse_assignments
    from ..jobs.plan import expand, plan_from
    from ..jobs.protocol import load_protocol
    from ..report.reliability import reliability_figure
    from ..run.adapt import source_val
    from ..store import open_store
    from ..training import checkpoint
    from ..training.calibration import calibration, reliability_bins, scale_probabilities
    from ..training.trainer import pick_device
    from ..tta.evaluation import adapt, temperature_of, tta_specs
    from ..tta.stream import StreamSettings

    sets = parse_assignments(args.set, "--set")
    protocol = load_protocol(args.protocol, {k: v for k, v in sets.items() if not k.startswith("tta.")})
    specs = tta_specs([t.strip() for t in args.tta.split(",") if t.strip()], {k: v for k, v in sets.items()
                                                                             if k.startswith("tta.")})
    plan = plan_from(protocol, args.data_root, parse_assignments(args.dataset_path, "--dataset-path"))
    store = open_store(args.tracking_uri)
    experiment = store.experiment(protocol.name, create=False)
    jobs = [j for j in expand(protocol, [args.method], plan) if j.source == args.source]
    if experiment is None or not jobs:
        raise BenchmarkError(f"no jobs of {args.method} trained on {args.source} in protocol {protocol.name!r}")
    if args.target not in jobs[0].targets:
        raise BenchmarkError(f"{args.target} is not a target of {protocol.name} (targets: {', '.join(jobs[0].targets)})")
    stream = StreamSettings(batch_size=args.batch_size)
    device = pick_device(args.device)
    pooled = {spec.label: ([], []) for spec in specs}
    seeds = 0
    for job in jobs:
        run = next((r for r in store.runs(experiment, job_hash=job.hash) if r.status == "FINISHED"), None)
        if run is None:
            continue
        seeds += 1
        with tempfile.TemporaryDirectory() as tmp:
            method, spec_file = checkpoint.load(store.checkpoint(run.run_id, Path(tmp)), device)
        state, size = method.state_dict(), spec_file["input_size"]
        data = decode_split(plan.samples(args.target, job.test_split), size, skip_bad=plan.skip_bad)
        val = source_val(plan, job, size)
        temperature = temperature_of(method, val, args.calibrate)
        for spec in specs:
            outcome = adapt(method, state, spec, {args.target: data}, stream, job.seed, val)
            if outcome.refused:
                raise BenchmarkError(outcome.refused)
            pooled[spec.label][0].append(data.labels)
            pooled[spec.label][1].append(scale_probabilities(outcome.targets[args.target].stream.probs, temperature))
    if not seeds:
        raise BenchmarkError(f"no FINISHED run of {args.method} trained on {args.source} in {store.uri}")
    panels = []
    for label, (labels, probs) in pooled.items():
        y, p = np.concatenate(labels), np.concatenate(probs)
        panels.append((label, reliability_bins(y, p), calibration(y, p).ece))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{args.method} trained on {args.source}, tested on {args.target} ({seeds} seed{'s' if seeds > 1 else ''} "
             f"pooled{', temperature-scaled' if args.calibrate != 'none' else ''})")
    written = reliability_figure(panels, out.parent / out.stem, title)
    print("wrote " + ", ".join(str(p) for p in written))
    for label, _, ece in panels:
        print(f"  {label}: ECE {100 * ece:.2f}%")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    rel = sub.add_parser("reliability", help="reliability diagram of a trained method on one target, plain and "
                         "adapted at test time (seeds pooled; no retraining)")
    rel.add_argument("--protocol", default="synth5")
    rel.add_argument("--method", required=True, help="the trained method")
    rel.add_argument("--source", required=True, help="its source (a protocol source)")
    rel.add_argument("--target", required=True, help="the target dataset")
    rel.add_argument("--tta", default="none", help="comma-separated TTA methods, one panel each (default none)")
    rel.add_argument("--batch-size", type=int, default=64, help="test batch size of the stream (default 64)")
    rel.add_argument("--calibrate", choices=["none", "temperature"], default="none")
    rel.add_argument("--set", action="append", metavar="KEY=VALUE", help="as for `adapt`")
    rel.add_argument("--out", default="results/reliability.png", help="PNG path (a PDF is written beside it)")
    rel.add_argument("--data-root")
    rel.add_argument("--dataset-path", action="append", metavar="NAME=DIR")
    rel.add_argument("--tracking-uri")
    rel.add_argument("--device")
    rel.set_defaults(func=_cmd_reliability)
