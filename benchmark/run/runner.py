"""Running one job, in whatever process an executor gives it: claim it in the result store,
train the method on its source, evaluate it on every target, record everything in its run.

A job that raises is recorded as FAILED with its error and traceback and comes back as a FAILED
result (the grid goes on); Ctrl-C closes its run as KILLED and propagates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import inspect
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..training import checkpoint
from ..core.cores import core_slot, machine_slot_folder
from ..data import decode_split
from ..data.union import union_split
from ..data.samples import printable_id
from ..core.environment import default_threads
from ..core.errors import BenchmarkError
from ..core.paths import results_dir
from ..jobs.plan import DataPlan, Job
from ..core.labels import CLASSES
from ..core.sources import parts as source_parts, seen
from ..training.evaluator import Evaluator
from ..report.figures import DPI
from ..store import DatasetRef, ResultStore, RunWriter, schema

_ENCODERS: dict[Any, Any] = {}  # one encoder per process, shared by its jobs
STOPPED_FROM_OUTSIDE = ("UncompletedJobError",)  # submitit's, raised in the job at a Slurm time limit


@dataclass
class RunContext:
    """What a job needs besides itself; picklable, so worker processes and Ray tasks get it too."""

    store: ResultStore
    experiment_id: str
    parent_run_id: str
    plan: DataPlan
    device: str | None = None
    threads: int | None = None  # torch threads per job (benchmark.core.environment.default_threads)
    system_metrics_s: float = 10.0  # seconds between samples of the machine's load (MLflow system/ metrics); 0: off
    # Where a job's training state is saved after each epoch, so that a later try of a stopped job
    # resumes there (benchmark.training.resume; run_grid's resume_folder). None: no saving.
    resume_dir: str | None = None
    resume_named: bool = False  # the user named resume_dir (else Slurm uses its shared folder)
    resume_every_s: float = 60.0  # at most one epoch checkpoint per this many seconds (0: every epoch)
    resume_mid_epoch_s: float | None = None  # also between batches once this many seconds passed (None: off)


@dataclass
class JobResult:
    job_hash: str
    label: str
    status: str  # FINISHED | FAILED | SKIPPED
    seconds: float = 0.0
    source_acc: float | None = None
    mean_target_acc: float | None = None  # over all targets, source included (the paper's Mean)
    mean_unseen_acc: float | None = None  # over the targets other than the source
    method: str = ""
    error: str = ""
    run_id: str = ""
    accs: dict[str, float] = field(default_factory=dict)
    collapsed: str = ""  # why its model looks collapsed on its source's test set (empty: it does not)


def library_versions() -> dict[str, str]:
    """The versions the numbers depend on, read from the installed metadata (importing open_clip
    only for its version cost every job process 1.6 s)."""
    from importlib.metadata import version

    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "open_clip": version("open_clip_torch"),
            "mlflow": version("mlflow"), "scikit-learn": version("scikit-learn"), "python": platform.python_version()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _encoder(job: Job):
    from ..models.encoders import build_encoder

    if job.encoder not in _ENCODERS:
        _ENCODERS[job.encoder] = build_encoder(job.encoder)
    return _ENCODERS[job.encoder]


def _flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in values.items()}


def run_job(job: Job, ctx: RunContext) -> JobResult:
    """Train and evaluate one job, logging everything to its own MLflow run. A failing job is a
    FAILED result, not an exception; Ctrl-C closes the run as KILLED and propagates."""
    return run_group([job], ctx)[0]


@dataclass
class _Prepared:
    """A claimed job ready to train: its run, method, splits and evaluator."""

    job: Job
    log: RunWriter
    result: JobResult
    start: float
    method: Any = None
    train: Any = None
    tests: dict = field(default_factory=dict)
    evaluator: Any = None
    resume: Any = None  # its ResumePoint, when ctx.resume_dir is set
    closed: bool = False  # its run is closed (FINISHED or FAILED)


def run_group(jobs: list[Job], ctx: RunContext) -> list[JobResult]:
    """Train and evaluate jobs of one method together (`benchmark run --fuse K`), each in its own
    run, exactly as `run_job` would one by one except that those whose epochs have the same
    length train fused (benchmark.training.fused). Every job is claimed before any trains; a
    job another process holds is left out (SKIPPED). One result per job, in the order given."""
    results: dict[str, JobResult] = {}
    claimed: list[_Prepared] = []
    for job in jobs:
        start = time.perf_counter()
        log = ctx.store.open_job(ctx.experiment_id, ctx.parent_run_id, job)
        holder = ctx.store.claim(ctx.experiment_id, job.hash, log.run_id)
        if holder is not None:  # another process trains (or trained) this job: leave no trace of ours
            ctx.store.delete_run(log.run_id)
            results[job.hash] = JobResult(job.hash, job.label, "SKIPPED", error=holder)
        else:
            claimed.append(_Prepared(job, log, JobResult(job.hash, job.label, "FAILED", run_id=log.run_id,
                                                         method=job.method), start))
    with contextlib.ExitStack() as stack:
        for p in claimed:
            stack.enter_context(ctx.store.heartbeat(p.log.run_id))
            stack.enter_context(ctx.store.system_metrics(p.log.run_id, ctx.system_metrics_s))
        stack.enter_context(core_slot(ctx.threads or default_threads(1), machine_slot_folder()))
        try:
            _train_group(claimed, ctx)
        except (KeyboardInterrupt, SystemExit) as exc:  # closed now, not left RUNNING for the next invocation
            # SystemExit: a scheduler stopping the process on purpose (submitit exits this way
            # when Slurm preempts a task and requeues it); the requeued task may claim at once.
            why = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else f"stopped (SystemExit {exc.code})"
            for p in claimed:
                if not p.closed:
                    p.log.tags({schema.ERROR: why})
                    p.log.finish("KILLED")
            raise
    for p in claimed:
        p.result.seconds = time.perf_counter() - p.start
        results[p.job.hash] = p.result
    return [results[job.hash] for job in jobs]


def _checkpoint_place(ctx: RunContext) -> tuple[Path, Any]:
    """The folder the job's checkpoints are in, and the artifact folder they are uploaded to
    when ctx.resume_dir is a tracking server's (the folder then stages local copies)."""
    from ..store.remote_folder import RemoteFolder, is_remote

    if is_remote(ctx.resume_dir):
        return results_dir() / "resume-staging", RemoteFolder(ctx.resume_dir, ctx.store.uri)
    return Path(ctx.resume_dir), None


def _resume_point(p: _Prepared, ctx: RunContext):
    """The job's epoch checkpoint; when an earlier try of it saved one, that try's history up to
    the saved epoch is copied into this run (the FINISHED run shows every epoch) and tagged."""
    from ..training.resume import ResumePoint

    folder, remote = _checkpoint_place(ctx)
    resume = ResumePoint.open(folder, p.job.hash, p.log.run_id, ctx.resume_every_s, ctx.resume_mid_epoch_s,
                              remote=remote)
    if ctx.resume_mid_epoch_s is not None and p.job.recipe.data_path == "per_sample":
        print(f"[resume] {p.job.label}: the per-sample data path draws its augmentation in loader workers; "
              "checkpoints at epoch ends only", flush=True)
    if resume.warning:
        print(f"[resume] warning: {p.job.label}: {resume.warning}", file=sys.stderr, flush=True)
    if resume.state is not None:
        _continue_history(p, ctx, resume, resume.previous_run_id)
    p.resume = resume
    return resume


def _group_resume_point(group: list[_Prepared], ctx: RunContext):
    """A fused group's resume point (after epochs, and between batches with --resume-mid-epoch), one file for its K jobs in their order (a later try that
    groups the same pending jobs the same way resumes it; another grouping starts over)."""
    import hashlib

    from ..training.resume import ResumePoint

    key = hashlib.sha256("|".join(p.job.hash for p in group).encode()).hexdigest()[:16]
    folder, remote = _checkpoint_place(ctx)
    resume = ResumePoint.open(folder, f"fused-{key}", ",".join(p.log.run_id for p in group),
                              ctx.resume_every_s, ctx.resume_mid_epoch_s, remote=remote)
    if resume.warning:
        print(f"[resume] warning: fused group of {len(group)}: {resume.warning}", file=sys.stderr, flush=True)
    if resume.state is not None:
        for p, previous in zip(group, resume.previous_run_id.split(",")):
            _continue_history(p, ctx, resume, previous)
    for p in group:
        p.resume = resume
    return resume


def _continue_history(p: _Prepared, ctx: RunContext, resume, previous: str) -> None:
    """Copy run `previous`'s history up to the checkpoint's epoch into the job's run, tag it and
    say so in one line."""
    copied = ""
    try:
        keys = [k for k in ctx.store.run(previous).metrics if not k.startswith("system/")]
    except BenchmarkError:  # another store than the earlier try's: train on, say so
        keys, copied = [], " (its history is not in this store)"
    by_step: dict[int, dict[str, float]] = {}
    for key, history in ctx.store.histories([previous], lambda key: True, {previous: keys})[previous].items():
        for step, value in history:
            if step <= resume.epoch:
                by_step.setdefault(step, {})[key] = value
    for step in sorted(by_step):
        p.log.metrics(by_step[step], step=step)
    p.log.tags({schema.RESUMED_FROM: f"{resume.saved_through()} of run {previous}{copied}"})
    history = f"epochs 1-{resume.epoch} of run {previous}" if resume.epoch else f"no epoch ended in run {previous}"
    print(f"[resume] {p.job.label}: resuming at {resume.resumes_at()} from {resume.where} ({history}{copied}), "
          f"in run {p.log.run_id}", flush=True)


def _fail(p: _Prepared, exc: BaseException) -> None:
    """Record `exc` as the job's error and close its run as FAILED."""
    p.result.error = f"{type(exc).__name__}: {exc}"
    p.closed = True
    # A failure of the job's own repeats: the next try starts from its first epoch. A stop from
    # outside keeps the checkpoint (submitit's UncompletedJobError: the Slurm time limit reached
    # with no requeue left), so a rerun with a longer limit goes on from it.
    if p.resume is not None and type(exc).__name__ not in STOPPED_FROM_OUTSIDE:
        p.resume.clear()
    try:
        p.log.tags({schema.ERROR: p.result.error[:5000]})
        p.log.text("error.txt", "".join(traceback.format_exception(exc)))
    finally:
        p.log.finish("FAILED")


def _train_group(claimed: list[_Prepared], ctx: RunContext) -> None:
    """Prepare each job, train them (fused where their splits allow), finish each; a job that
    fails anywhere is closed as FAILED and the others go on."""
    import torch

    from ..training.fused import epoch_length, fit_fused
    from ..training.trainer import pick_device

    try:
        if ctx.threads:
            torch.set_num_threads(ctx.threads)
        device = pick_device(ctx.device)
    except Exception as exc:  # noqa: BLE001 - no device: every job of the group failed
        for p in claimed:
            _fail(p, exc)
        return
    ready = []
    for p in claimed:
        try:
            _prepare(p, ctx, device)
            ready.append(p)
        except Exception as exc:  # noqa: BLE001 - a failing job is recorded and the grid goes on
            _fail(p, exc)
    groups: list[list[_Prepared]] = [[p] for p in ready]
    if len(ready) > 1 and all(type(p.method).fuses for p in ready):
        by_length: dict[int, list[_Prepared]] = {}
        for p in ready:  # jobs fuse when every step has K batches of one size: epochs of one length
            by_length.setdefault(epoch_length(p.train, p.job.recipe), []).append(p)
        groups = list(by_length.values())
    for group in groups:
        for p in group:
            p.log.params({schema.FUSED: len(group)})
        if len(group) == 1:
            p = group[0]
            try:
                takes = inspect.signature(p.method.fit).parameters
                extra = {"resume": _resume_point(p, ctx)} if ctx.resume_dir is not None and "resume" in takes else {}
                if "validation" in takes:  # the source's validation split (SWAD reads its loss there)
                    extra["validation"] = p.evaluator.val
                p.method.fit(p.train, recipe=p.job.recipe, device=device, log=p.log, epoch_end=p.evaluator.epoch_end,
                             **extra)
            except Exception as exc:  # noqa: BLE001
                _fail(p, exc)
                continue
            _finish(p, ctx)
            continue
        try:
            resume = _group_resume_point(group, ctx) if ctx.resume_dir is not None else None
            errors = fit_fused([p.method for p in group], [p.train for p in group],
                               recipes=[p.job.recipe for p in group], device=device, logs=[p.log for p in group],
                               epoch_ends=[p.evaluator.epoch_end for p in group], resume=resume)
        except Exception as exc:  # noqa: BLE001 - the group's training failed: each of its jobs did
            errors = [exc] * len(group)
        for p, error in zip(group, errors):
            if error is not None:
                _fail(p, error)
            else:
                _finish(p, ctx)


def _prepare(p: _Prepared, ctx: RunContext, device) -> None:
    """The job's tags and parameters, its decoded splits, its method and evaluator."""
    import torch

    from ..training.method import Components
    from ..training.plugins import build_method

    from ..core.environment import environment
    from ..training.numerics import Numerics
    from ..training.optimization import adam_kernels

    job, log = p.job, p.log
    if device.type == "cuda":  # before the environment is recorded (trainer.fit sets it too)
        torch.backends.cudnn.benchmark = job.recipe.cudnn_benchmark
    numerics = Numerics.from_recipe(device, job.recipe)
    commit = git_commit()
    log.tags({schema.USER: getpass.getuser(), schema.GIT_COMMIT: commit,
              schema.DESCRIPTION: f"{job.label}, protocol {job.protocol}: trained on {job.source}, tested on "
                                  f"{', '.join(job.targets)} (job {job.hash})"})
    # The method first: what its optimiser is goes into the parameters below.
    components = Components(job.backbone, _encoder(job) if job.encoder else None)
    p.method = build_method(job.method, job.hparams, components)
    settings = getattr(p.method, "optimizer_settings", None)
    optimizer = settings().optimizer if settings is not None else "adam"
    log.params({schema.METHOD: job.method, schema.SOURCE: job.source, schema.SEED: job.seed,
                **_flatten("hp", job.hparams), **_flatten("recipe", dataclasses.asdict(job.recipe)),
                "encoder": job.encoder.id if job.encoder else "none",
                "encoder.digest": job.encoder_digest or "none",
                schema.BACKBONE: job.backbone.id,
                "backbone.digest": job.backbone_digest, "test_split": job.test_split,
                **{schema.data_param(*k.rsplit(":", 1)): v for k, v in job.fingerprints.items()},
                **_flatten("lib", library_versions()), "git_commit": commit,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                # What recipe.precision resolved to on this device (it is "auto" by default).
                "execution.autocast": str(numerics.autocast_dtype).removeprefix("torch.") if numerics.autocast_dtype else "off",
                "execution.clip_dtype": str(numerics.encoder_dtype).removeprefix("torch."),
                **environment(device),
                # Adam's kernels as recipe.adam_impl resolved them; "sgd" for a method on SGD (OFER).
                "execution.adam": (next(iter(adam_kernels(job.recipe.adam_impl, device)), "torch default")
                                   if optimizer == "adam" else f"none ({optimizer})")})
    plan = ctx.plan
    size = job.recipe.input_size
    # One dataset, or each of a multi-source job's (trained on as one split, benchmark.data.union).
    parts = {d: plan.source_splits(d, job.recipe.val_fraction, job.recipe.seed) for d in source_parts(job.source)}
    trains = {d: decode_split(t, size, skip_bad=plan.skip_bad) for d, (t, _) in parts.items()}
    vals = [decode_split(v, size, skip_bad=plan.skip_bad) for _, v in parts.values() if v is not None]
    p.train, val = union_split(list(trains.values())), union_split(vals) if vals else None
    dropped = {f"dropped.{d}.train.{reason}": n for d, split in trains.items()
               for reason, n in split.dropped.items() if n}
    if dropped:
        log.params(dropped)
    p.tests = {t: decode_split(plan.samples(t, job.test_split), size, skip_bad=plan.skip_bad) for t in job.targets}
    read = [*((t, "train") for t, _ in parts.values()), *((v, "validation") for _, v in parts.values() if v is not None),
            *((plan.samples(t, job.test_split), "test") for t in job.targets)]
    log.inputs([DatasetRef(f"{s.dataset}:{s.split}", s.content_digest or s.fingerprint, str(s.root), role)
                for s, role in read])
    p.evaluator = Evaluator(p.method, p.tests, log, val)


def _finish(p: _Prepared, ctx: RunContext) -> None:
    """After training: the last evaluation, each target's artifacts, the trained method, the
    summary metrics; the run closed as FINISHED (or FAILED if any of this raises)."""
    from ..training.metrics import collapse

    job, log, result, method, evaluator, plan = p.job, p.log, p.result, p.method, p.evaluator, ctx.plan
    try:
        evaluator.finish(job.recipe.epochs)
        collapsed = []
        with tempfile.TemporaryDirectory() as tmp:
            for target, test in p.tests.items():
                probs, ev = evaluator.probs[target], evaluator.evaluations[target]
                result.accs[target] = ev.acc
                reason = collapse(test.labels, probs.argmax(1)) if seen(job.source, target) else None
                if reason:  # only in-domain: a model that works may still fail on an unseen domain
                    collapsed.append(f"{target}: {reason}")
                ids = [printable_id(plan.samples(target, job.test_split).ids[k]) for k in test.kept]
                _write_target_artifacts(Path(tmp) / schema.safe_name(target), test, ids, probs, probs.argmax(1), ev)
                if target == source_parts(job.source)[0]:  # the method's figures on (the first) source's test set
                    method.report(test, log)
            fig = confusion_figure({t: (evaluator.evaluations[t].confusion, evaluator.evaluations[t].acc)
                                    for t in p.tests},
                                   f"{job.method} trained on {job.source} (seed {job.seed}), {job.test_split} splits")
            # PNG only: a PDF per job cost ~0.4 s of a 7 s synth5 job; the figures meant for a paper
            # (benchmark table / compare / sweep) come with a PDF beside each PNG.
            fig.savefig(Path(tmp) / "confusion.png", dpi=DPI)
            import matplotlib.pyplot as plt

            plt.close(fig)
            log.artifacts(Path(tmp), "evaluation")
        if collapsed:
            result.collapsed = "; ".join(collapsed)
            log.tags({schema.COLLAPSED: result.collapsed})
        seen_accs = [acc for target, acc in result.accs.items() if seen(job.source, target)]
        result.source_acc = float(np.mean(seen_accs)) if seen_accs else None
        result.mean_target_acc = float(np.mean(list(result.accs.values())))
        unseen = [acc for target, acc in result.accs.items() if not seen(job.source, target)]
        result.mean_unseen_acc = float(np.mean(unseen)) if unseen else None
        log.metrics({schema.MEAN_ACC: result.mean_target_acc, schema.JOB_SECONDS: time.perf_counter() - p.start,
                     **({schema.MEAN_UNSEEN_ACC: result.mean_unseen_acc} if unseen else {})}, step=evaluator.epoch)
        with tempfile.TemporaryDirectory() as tmp:  # the trained method: an MLflow model, else the run's model/
            checkpoint.write(Path(tmp) / "checkpoint", method, job)
            if ctx.store.has_models:
                from ..deploy import logged_model  # MLflow's pyfunc: imported by a job that logs one

                logged_model.log(ctx.store, log.run_id, Path(tmp) / "checkpoint", evaluator.epoch)
            else:
                log.artifacts(Path(tmp) / "checkpoint", checkpoint.FOLDER)
        result.status = "FINISHED"
        p.closed = True
        log.finish("FINISHED")
        if p.resume is not None:
            p.resume.clear()
    except Exception as exc:  # noqa: BLE001 - a failing job is recorded and the grid goes on
        _fail(p, exc)


def _write_target_artifacts(folder: Path, test, ids: list[str], probs: np.ndarray, preds: np.ndarray, ev) -> None:
    """confusion.csv (counts) and predictions.csv (id, label, prediction, the seven probabilities)
    of one target."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(ev.confusion, index=list(CLASSES), columns=list(CLASSES)).to_csv(folder / "confusion.csv")
    frame = pd.DataFrame({"id": ids, "label": [CLASSES[y] for y in test.labels], "pred": [CLASSES[y] for y in preds]})
    for k, name in enumerate(CLASSES):
        frame[f"p_{name}"] = probs[:, k].round(6)
    frame.to_csv(folder / "predictions.csv", index=False)


def confusion_figure(panels: dict[str, tuple[np.ndarray, float]], title: str):
    """One panel per target: its confusion matrix normalised per true class (rows sum to 1), each
    cell's share and count, the target's accuracy; one labelled colour bar; text dark or light by
    the cell's colour so that every cell reads. One figure per job (drawing is the slow part)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.2, 4.9), squeeze=False)
    for ax, (target, (confusion, acc)) in zip(axes[0], panels.items()):
        totals = confusion.sum(axis=1, keepdims=True)
        share = np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)
        image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(share.shape[0]):
            for j in range(share.shape[1]):
                ax.text(j, i, f"{share[i, j]:.2f}\n({confusion[i, j]})", ha="center", va="center", fontsize=5.5,
                        color="white" if share[i, j] > 0.55 else "black")
        ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(CLASSES)), CLASSES if ax is axes[0][0] else [], fontsize=7)
        ax.set_xlabel("predicted class", fontsize=8)
        ax.set_title(f"{target}: accuracy {100 * acc:.2f}%", fontsize=9)
    axes[0][0].set_ylabel("true class", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), label="share of the true class's test images", fraction=0.02)
    return fig
