"""`benchmark adapt`: every FINISHED trained model of a protocol, adapted at test time by each TTA
method on each of its targets (benchmark.tta), without retraining; each (trained job, TTA method
and options, stream, target) one recorded evaluation run with its own hash.

Run again, nothing FINISHED is redone; killed, the next invocation redoes only what has no
FINISHED run (an evaluation's run is written whole when its target's stream is done, so a kill
leaves nothing half-counted; a run left RUNNING by a dead process is closed as FAILED and done
again). A TTA method that cannot adapt a model is recorded once, with its reason, and no metrics.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BenchmarkError
from ..core.sources import parts as source_parts, seen
from ..data.cache import decode_split
from ..data.slices import base_dataset
from ..data.union import union_split
from ..store import DatasetRef, ResultStore, schema
from ..store.liveness import process_tags, run_alive
from ..store.results_frame import method_label


@dataclass
class AdaptSummary:
    done: int = 0  # evaluations run now
    skipped: int = 0  # FINISHED before
    refused: int = 0
    jobs_missing: int = 0  # jobs of the protocol with no FINISHED run (nothing to adapt)


def adapt_grid(protocol, methods: list[str], plan, specs, stream, *, store: ResultStore, calibrate: str = "none",
               slices: list[str] | None = None, device: str | None = None, command: str = "",
               out=print) -> AdaptSummary:
    """`slices`: evaluate on these slices of each job's targets (benchmark.data.slices) instead of
    on the targets themselves."""
    import torch

    from ..jobs.plan import expand
    from ..training import checkpoint
    from ..training.trainer import pick_device
    from ..tta.base import TTA_METHODS
    from ..tta.evaluation import adapt, evaluation_hash, evaluation_label, stream_seed, temperature_of

    jobs = expand(protocol, methods, plan)
    experiment_id = store.experiment(protocol.name, create=False)
    if experiment_id is None:
        raise BenchmarkError(f"no runs of protocol {protocol.name!r} in {store.uri}: run the grid first (benchmark run)")
    states = store.job_states(jobs, experiment_id)
    records = _tta_records(store, experiment_id)
    summary = AdaptSummary()
    torch_device = pick_device(device)
    for state in states:
        job = state.job
        if state.state != "FINISHED":
            summary.jobs_missing += 1
            continue
        run = next(r for r in store.runs(experiment_id, job_hash=job.hash) if r.status == "FINISHED")
        targets = [s for s in slices if base_dataset(s) in job.targets] if slices else list(job.targets)
        wanted = []
        for spec in specs:
            for k, target in enumerate(targets):
                key = evaluation_hash(job.hash, spec, stream, target, stream_seed(job.seed, target), calibrate,
                                      tuple(targets[:k]))
                if records.get(key) == "FINISHED":
                    summary.skipped += 1
                else:
                    wanted.append((spec, target, key))
        if not wanted:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            method, spec_file = checkpoint.load(store.checkpoint(run.run_id, Path(tmp)), torch_device)
        state_dict = method.state_dict()
        size = spec_file["input_size"]
        tests = {t: decode_split(plan.samples(t, job.test_split), size, skip_bad=plan.skip_bad) for t in targets}
        needs_val = calibrate != "none" or any(TTA_METHODS.get(s.name).needs_source_val for s, _, _ in wanted)
        val = source_val(plan, job, size) if needs_val else None
        temperature = temperature_of(method, val, calibrate)
        model = store.model_of_run(run.run_id)
        for spec in specs:
            mine = [(target, key) for s, target, key in wanted if s == spec]
            if not mine:
                continue
            # Per domain: only the targets still wanted. Continual: the whole sequence again, as
            # every target's stream depends on those before it.
            streamed = targets if stream.reset == "never" else [t for t, _ in mine]
            outcome = adapt(method, state_dict, spec, {t: tests[t] for t in streamed}, stream, job.seed, val,
                            temperature, schema_prefix=schema.target_prefix)
            label = evaluation_label(spec, stream, calibrate)
            for target, key in mine:
                settings = {**{f"tta.stream.{k}": v for k, v in dataclasses.asdict(stream).items()},
                            "tta.stream.seed": stream_seed(job.seed, target), "tta.calibrate": calibrate}
                _record(store, experiment_id, run, job, spec, label, target, key, outcome, tests[target], model,
                        command, settings)
                if outcome.refused:
                    summary.refused += 1
                else:
                    summary.done += 1
            out(_line(job, label, outcome, run, [t for t, _ in mine]))
    return summary


def _tta_records(store: ResultStore, experiment_id: str) -> dict[str, str]:
    """Evaluation hash -> FINISHED, or the state of its latest run; runs a dead process left
    RUNNING are closed as FAILED first."""
    out: dict[str, str] = {}
    for run in store.runs(experiment_id, kind=schema.TTA_KIND):
        key = run.tags.get(schema.TTA_HASH)
        status = run.status
        if status == "RUNNING" and run_alive(run.tags) is False:
            log = store.run_log(run.run_id)
            log.tags({schema.ERROR: "abandoned: its process ended without finishing"})
            log.finish("FAILED")
            status = "FAILED"
        if out.get(key) != "FINISHED":
            out[key] = status
    return out


def source_val(plan, job, size: int):
    """The job's source validation split (its own, or the held-out share it trained without), or None."""
    vals = [v for v in (plan.source_splits(d, job.recipe.val_fraction, job.recipe.seed)[1]
                        for d in source_parts(job.source)) if v is not None]
    if not vals:
        return None
    return union_split([decode_split(v, size, skip_bad=plan.skip_bad) for v in vals])


def _record(store, experiment_id, run, job, spec, label, target, key, outcome, data, model, command, settings) -> None:
    trained = method_label(run)
    tags = {schema.KIND: schema.TTA_KIND, schema.TTA_HASH: key, schema.TTA: label, schema.TTA_TARGET: target,
            schema.METHOD: job.method, schema.SOURCE: job.source, schema.SEED: str(job.seed),
            schema.PROTOCOL: job.protocol, schema.SOURCE_RUN: run.run_id, schema.PARENT: run.run_id,
            schema.DG_RECIPES: trained.partition("+")[2], schema.COMMAND: command[:5000],
            schema.DESCRIPTION: f"{trained} trained on {job.source} (seed {job.seed}), adapted at test time by "
                                f"{label} on {target}", **process_tags()}
    if model is not None:
        tags[schema.SOURCE_MODEL] = model.model_id
    if outcome.refused:
        tags[schema.ERROR] = f"not applicable: {outcome.refused}"
    log = store.create_run(experiment_id, f"{schema.job_run_name(job.method, job.source, job.seed)}+{label}"
                                          f"@{schema.safe_name(target)}", tags)
    log.params({schema.BACKBONE: run.params.get(schema.BACKBONE, ""), "tta.method": spec.name, **settings,
                **{f"tta.{k}": v for k, v in spec.identity()["options"].items()},
                **{k: v for k, v in run.params.items() if k.startswith(schema.DATA_PREFIX + target + ":")},
                **{k: v for k, v in run.params.items() if k.startswith("env.") or k == schema.FUSED}})
    if not outcome.refused:
        done = outcome.targets[target]
        dataset = DatasetRef(f"{data.dataset}:{data.split}", data.fingerprint, "", "test")
        log.inputs([dataset])
        if model is None:  # a store without models (JSON lines), or a run from before them
            log.metrics(done.metrics, step=0)
        else:  # linked to the trained model, a target's metrics also to its dataset: the model's page lists them
            store.log_model_metrics(log.run_id, model.model_id, done.metrics, 0,
                                    {schema.target_prefix(target) + "/": dataset})
    log.finish("FINISHED")


def _line(job, label: str, outcome, run, targets: list[str]) -> str:
    head = f"{job.label} + {label}:"
    if outcome.refused:
        return f"{head} n/a ({outcome.refused})"
    cells = []
    for target in targets:
        done = outcome.targets[target]
        acc = done.metrics[f"{schema.target_prefix(target)}/acc"]
        plain = run.metrics.get(f"{schema.target_prefix(target)}/acc")
        mark = "" if not seen(job.source, base_dataset(target)) else " (in-domain)"
        cells.append(f"{target} {100 * acc:.2f}" + (f" (plain {100 * plain:.2f})" if plain is not None else "") + mark)
    return f"{head} " + ", ".join(cells)
