"""Each TTA method's time per test image, relative to the same stream without adaptation: one
protocol's trained models (one source, one seed) adapting on their unseen targets, median of
three repeats (run it alone on the machine). EATA's Fisher, estimated once per model before the
stream, is not timed.

    python scripts/tta_cost.py --protocol synth5_tta --source synth5/studio --seed 0 [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from benchmark.data.cache import decode_split
from benchmark.jobs.plan import expand, plan_from
from benchmark.jobs.protocol import load_protocol
from benchmark.store import open_store
from benchmark.training import checkpoint
from benchmark.tta.evaluation import adapt, tta_specs
from benchmark.tta.stream import StreamSettings

NAMES = ["none", "norm", "tent", "t3a", "sar", "eta", "eata", "lame", "shot_im"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="synth5_tta")
    parser.add_argument("--source", default="synth5/studio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    store = open_store(args.tracking_uri)
    protocol = load_protocol(args.protocol)
    plan = plan_from(protocol, None, {})
    experiment = store.experiment(protocol.name, create=False)
    for job in expand(protocol, protocol.methods, plan):
        if job.source != args.source or job.seed != args.seed:
            continue
        run = next(r for r in store.runs(experiment, job_hash=job.hash) if r.status == "FINISHED")
        with tempfile.TemporaryDirectory() as tmp:
            method, spec = checkpoint.load(store.checkpoint(run.run_id, Path(tmp)), torch.device("cpu"))
        state = method.state_dict()
        targets = {t: decode_split(plan.samples(t, job.test_split), spec["input_size"])
                   for t in job.targets if t != job.source}
        val = plan.source_splits(job.source, job.recipe.val_fraction, job.recipe.seed)[1]
        val = decode_split(val, spec["input_size"]) if val is not None else None
        images = sum(len(d) for d in targets.values())
        seconds = {}
        for tta in tta_specs(NAMES, {}):
            times = []
            for _ in range(args.repeats):
                outcome = adapt(method, state, tta, targets, StreamSettings(), job.seed, val)
                times.append(sum(t.stream.seconds for t in outcome.targets.values()) / images)
            seconds[tta.name] = statistics.median(times)
        print(f"{job.method} ({images} images): " + ", ".join(
            f"{name} {1000 * s:.2f} ms ({s / seconds['none']:.2f}x)" for name, s in seconds.items()))


if __name__ == "__main__":
    main()
