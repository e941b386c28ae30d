"""The Slurm executor: the grid's jobs as one Slurm job array, through submitit.

Each array task runs one unit of work (a job, a fused group, or with `--jobs-per-gpu N` N units
in a worker pool on the task's GPU) with `run_group`, so the claim rules hold on the cluster as
everywhere: a job trains once however many submitters ask. Settings come from `--slurm KEY=VALUE`
and the `[slurm]` table of `--slurm-config FILE` (the flags win):

    partition, time_min (wall time per task, minutes, default a day; or `time = "H:MM:SS"`), mem_gb,
    cpus_per_task (default: --threads x --jobs-per-gpu), gpus_per_task (default 0),
    account, qos, array_parallelism (tasks running at once), folder (the logs),
    timeout_requeues (how often a task that reaches its time limit is requeued, default 3)
    any other key: an sbatch directive, `--KEY=VALUE`

Preemption and time limits: Slurm warns a task (USR2, `signal_delay_s` before it kills it);
submitit then requeues it, and its jobs go on from the last epoch they completed (each job
saves its training state after every epoch in `<folder>/resume/`, benchmark.training.resume).
A preempted task is requeued every time; one at its time limit `timeout_requeues` times, then its
jobs are FAILED with "Slurm time limit reached" and keep their checkpoints, so the same command
with a longer limit resumes them.

The submitting process need not stay: every submission is recorded (hash, Slurm id) in
`<folder>/submitted.jsonl`, and a later `benchmark run` with the same arguments skips the jobs
FINISHED, live-claimed, or still queued or running in Slurm, and submits only the rest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.errors import BenchmarkError
from ..runner import JobResult, run_group
from . import EXECUTORS, for_workers, lost, work_units

ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
         "SUSPENDED", "STAGE_OUT", "SIGNALING")
NAMED = {"partition": str, "time_min": int, "time": str, "mem_gb": (int, float), "cpus_per_task": int,
         "gpus_per_task": int, "account": str, "qos": str, "array_parallelism": int, "folder": str,
         "timeout_requeues": int}
POLL_S = 2.0
DEFAULT_TIME_MIN = 24 * 60  # a task's wall time when none is given (sbatch refuses it above the partition's)


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int | None = None
    time: str | None = None  # Slurm's own format ("0:30" is 30 s), when minutes are too coarse
    mem_gb: float | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int = 0
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 256
    folder: str | None = None
    timeout_requeues: int = 3  # submitit's own default
    directives: dict[str, Any] = field(default_factory=dict)  # further sbatch options, --KEY=VALUE


def slurm_options(config: str | None, assignments: list[str] | None) -> SlurmOptions:
    """The `[slurm]` table of `config` (a TOML file), then `KEY=VALUE` assignments over it."""
    from ...jobs.protocol import parse_value

    values: dict[str, Any] = {}
    if config:
        path = Path(config)
        try:
            table = tomllib.loads(path.read_text()).get("slurm", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BenchmarkError(f"--slurm-config {path}: {exc}") from None
        if not isinstance(table, dict):
            raise BenchmarkError(f"--slurm-config {path}: [slurm] must be a table")
        values.update({k: (v, f"{path}: slurm.{k}") for k, v in table.items()})
    for text in assignments or []:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise BenchmarkError(f"--slurm {text!r}: expected KEY=VALUE")
        values[key.strip()] = (parse_value(raw.strip()), f"--slurm {key.strip()}")
    named, directives = {}, {}
    for key, (value, where) in values.items():
        if key in NAMED:
            if not isinstance(value, NAMED[key]) or isinstance(value, bool):
                raise BenchmarkError(f"{where} = {value!r}: expected {getattr(NAMED[key], '__name__', 'a number')}")
            named[key] = value
        else:
            directives[key.replace("_", "-")] = value
    options = SlurmOptions(**named, directives=directives)
    if options.array_parallelism < 1:
        raise BenchmarkError(f"--slurm array_parallelism = {options.array_parallelism}: must be 1 or more")
    if options.timeout_requeues < 0:
        raise BenchmarkError(f"--slurm timeout_requeues = {options.timeout_requeues}: must be 0 or more")
    return options


def log_folder(options: SlurmOptions, protocol: str) -> Path:
    """Absolute: the tasks read it too (their checkpoints), wherever Slurm starts them."""
    return (Path(options.folder or Path("results") / "slurm") / protocol).resolve()


def submitted(folder: Path) -> dict[str, str]:
    """Job hash -> the Slurm id it was last submitted as (from submitted.jsonl)."""
    path = folder / "submitted.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            out[entry["hash"]] = entry["slurm_id"]
    return out


def slurm_states(ids: list[str]) -> dict[str, str]:
    """Slurm id -> state, for those squeue still knows (queued, running, just ended)."""
    if not ids:
        return {}
    try:  # this user's jobs only: a cluster's whole queue may be long
        out = subprocess.run(["squeue", "--me", "--noheader", "--array", "--format=%i %T", "--states=all"],
                             capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BenchmarkError("squeue not found: --executor slurm runs where Slurm's commands are (a login node)") from None
    if out.returncode != 0:
        raise BenchmarkError(f"squeue failed: {out.stderr.strip()}")
    states = dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)
    return {i: states[i] for i in ids if i in states}


def slurm_reason(job) -> str:
    """Why Slurm ended a task, from its log ("CANCELLED ... DUE TO TIME LIMIT"), or its state."""
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [line for line in lines if re.search(r"\*\*\* .*(CANCELLED|DUE TO|PREEMPT)", line)]
        if hits:
            return "Slurm: " + hits[-1].strip(" *").split("*** ")[-1].strip(" *")
    try:
        return f"Slurm state {job.state}"
    except Exception:  # noqa: BLE001 - no accounting: the state may be unknowable
        return "Slurm task ended without a result"


class SlurmTask:
    """One array task: its units one after another, or `jobs_per_gpu` at once in worker processes.

    A class with `checkpoint` so that submitit requeues it at its time limit too, not only on
    preemption: the requeued task is the same call, and its jobs resume from their epoch
    checkpoints (RunContext.resume_dir)."""

    def __call__(self, units, ctx, jobs_per_gpu: int) -> list[list[JobResult]]:
        # Slurm sends SIGCONT with its USR2 warning. submitit's SIGCONT handler logs a line; when
        # the USR2 handler's "timed out, not requeued" error is raised inside that logging call,
        # logging swallows it and the task trains on until Slurm kills it without a result (seen
        # in CI). SIGCONT needs no handler: the default just continues the process.
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
        if jobs_per_gpu == 1 or len(units) == 1:
            return [run_group(group, ctx) for group in units]
        from .pool import map_in_pool

        results: dict[int, list[JobResult]] = {}

        def done(k, group_results, error):
            results[k] = group_results if error is None else [lost(job, error) for job in units[k]]

        map_in_pool(run_group, ((k, (group, ctx)) for k, group in enumerate(units)), jobs_per_gpu, 1,
                    lambda k: None, done)
        return [results[k] for k in range(len(units))]

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on Slurm's warning: the same call again (the jobs' state is on disk)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@EXECUTORS.register("slurm")
def run_slurm(jobs, ctx, options, announce, report):
    try:
        import submitit
    except ImportError:
        raise BenchmarkError("--executor slurm needs submitit: pip install -e '.[slurm]'") from None
    slurm = options.slurm or SlurmOptions()
    folder = log_folder(slurm, jobs[0].protocol) if jobs else Path(".")
    record = submitted(folder)
    queued = slurm_states([i for h, i in record.items() if h in {j.hash for j in jobs}])
    results, todo = [], []
    for job in jobs:
        state = queued.get(record.get(job.hash, ""))
        if state in ALIVE:
            result = JobResult(job.hash, job.label, "SKIPPED", method=job.method,
                               error=f"{state} in Slurm as job {record[job.hash]} (submitted earlier)")
            results.append(result)
            report(result)
        else:
            todo.append(job)
    units = work_units(todo, options)
    tasks = [units[k:k + options.jobs_per_gpu] for k in range(0, len(units), options.jobs_per_gpu)]
    if not tasks:
        return results
    executor = submitit.SlurmExecutor(folder=folder / ctx.parent_run_id / "%j", max_num_timeout=slurm.timeout_requeues)
    params: dict[str, Any] = {"job_name": f"benchmark-{jobs[0].protocol}", "array_parallelism": slurm.array_parallelism,
                              "cpus_per_task": slurm.cpus_per_task or (ctx.threads or 1) * options.jobs_per_gpu,
                              "additional_parameters": dict(slurm.directives)}
    for key in ("partition", "account", "qos"):
        if getattr(slurm, key):
            params[key] = getattr(slurm, key)
    # Always a limit: submitit's default is 5 minutes, and it tells a time-out from a preemption
    # by the limit it was given.
    limit_s = time_limit_s(slurm) or DEFAULT_TIME_MIN * 60
    params["time"] = math.ceil(limit_s / 60)
    # submitit's warning (USR2) comes this long before the limit: after Python is up even for short limits.
    params["signal_delay_s"] = min(90, max(5, limit_s // 4))
    if slurm.mem_gb is not None:
        params["mem"] = f"{int(slurm.mem_gb * 1024)}MB"
    if slurm.gpus_per_task:
        params["gpus_per_task"] = slurm.gpus_per_task
    executor.update_parameters(**params)
    # Epoch checkpoints in the shared folder every node reads, unless resume is off or a folder was named.
    resume_dir = ctx.resume_dir if ctx.resume_dir is None or ctx.resume_named else str(folder / "resume")
    shipped = dataclasses.replace(for_workers(ctx), resume_dir=resume_dir)
    for task in tasks:
        for group in task:
            for job in group:
                announce(job)
    try:
        submitted_jobs = executor.map_array(SlurmTask(), tasks, [shipped] * len(tasks),
                                            [options.jobs_per_gpu] * len(tasks))
    except Exception as exc:  # noqa: BLE001 - sbatch refused (bad partition, account...): say what it said
        raise BenchmarkError(f"sbatch refused the array: {exc}") from None
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "submitted.jsonl", "a") as fh:
        for task, sjob in zip(tasks, submitted_jobs):
            for group in task:
                for job in group:
                    fh.write(json.dumps({"hash": job.hash, "slurm_id": sjob.job_id, "label": job.label}) + "\n")
    print(f"submitted {len(tasks)} Slurm task(s) as array {submitted_jobs[0].job_id.split('_')[0]}; logs in "
          f"{folder / ctx.parent_run_id}", flush=True)
    pending = dict(zip(submitted_jobs, tasks))
    ended_polls: dict[Any, int] = {}
    while pending:
        # submitit sees a task end by its result file (and by sacct, which clusters without
        # accounting lack); a task killed before writing one (OOM, node lost, scancel) is seen
        # gone from squeue's live states instead, a few polls later.
        states = slurm_states([s.job_id for s in pending])
        for sjob in list(pending):
            if not sjob.done():
                state = states.get(sjob.job_id)
                if state is None or state in ALIVE:
                    continue
                ended_polls[sjob] = ended_polls.get(sjob, 0) + 1
                if ended_polls[sjob] < 3:
                    continue
            task = pending.pop(sjob)
            try:
                if not sjob.done():  # gone without a result: result() would wait for it forever
                    raise BenchmarkError(f"no result; squeue says {states.get(sjob.job_id)}")
                task_results = [r for group_results in sjob.result() for r in group_results]
            except Exception as exc:  # noqa: BLE001 - the task died (time limit, node lost, cancelled)
                reason = slurm_reason(sjob)
                if "DUE TO TIME LIMIT" in reason:  # killed at the limit before it could close its jobs
                    reason = f"Slurm time limit reached ({limit_s} s): {reason}"
                task_results = [lost(job, BenchmarkError(f"{reason} (Slurm job {sjob.job_id}; {type(exc).__name__})"))
                                for group in task for job in group]
            for result in task_results:
                if result.status == "FAILED" and "timed-out" in result.error:  # submitit's USR2 before the limit
                    result.error = f"Slurm time limit reached ({limit_s} s): {result.error}"
                results.append(result)
                report(result)
        if pending:
            time.sleep(POLL_S)
    return results


def time_limit_s(slurm: SlurmOptions) -> int | None:
    """The task's wall-time limit in seconds, when one is set ("M", "M:S", "H:M:S", "D-H:M:S")."""
    if slurm.time is not None:
        days, _, clock = slurm.time.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 1:
            parts = [0, parts[0], 0]
        elif len(parts) == 2:
            parts = [0, *parts]
        return ((int(days or 0) * 24 + parts[0]) * 60 + parts[1]) * 60 + parts[2]
    return slurm.time_min * 60 if slurm.time_min is not None else None
