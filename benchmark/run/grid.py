"""`benchmark run`: expand the grid, resume it, execute it (benchmark.run.executors), summarise it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from tabulate import tabulate

from ..core.environment import default_threads
from ..core.errors import BenchmarkError
from ..core.paths import results_dir
from ..jobs.plan import DataPlan, Job, expand, not_applicable
from ..jobs.protocol import Protocol
from .executors import EXECUTORS, ExecutorOptions
from .runner import JobResult, RunContext
from ..store import JobState, ResultStore, default_uri, schema
from ..store.remote_folder import is_remote


def dry_run_table(states: list[JobState]) -> str:
    rows = [[s.job.method, s.job.source, s.job.seed, s.job.hash, s.state] for s in states]
    headers = ["method", "source", "seed", "hash", "status"]
    if any(s.job.sweep for s in states):
        rows = [row + [schema.sweep_label(s.job.sweep)] for row, s in zip(rows, states)]
        headers.append("sweep point")
    return tabulate(rows, headers=headers)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def report(result: JobResult, where: str = "") -> None:
    """One line per job result; `where` is the grid's progress ("3/10 done, ...")."""
    where = f" [{where}]" if where else ""
    if result.status == "SKIPPED":
        print(f"[skip] {result.label}: {result.error}{where}", flush=True)
    elif result.status == "FINISHED":
        unseen = "" if result.mean_unseen_acc is None else f", mean unseen acc {100 * result.mean_unseen_acc:.2f}"
        source = "" if result.source_acc is None else f", source acc {100 * result.source_acc:.2f}"
        collapsed = " COLLAPSED" if result.collapsed else ""
        print(f"[done] {result.label}: {result.seconds:.0f}s{source}{unseen}{collapsed} "
              f"(run {result.run_id}){where}", flush=True)
    else:
        print(f"[FAILED] {result.label}: {result.error} (run {result.run_id}){where}", flush=True)


class Progress:
    """The grid-level lines: `[k/N]` as jobs start, and as each ends how many are done, the time
    since the first started and an estimate of what is left (elapsed per finished job, times the
    jobs left: it already counts the jobs that run at once)."""

    def __init__(self, total: int):
        self.total, self.started, self.ended = total, 0, 0
        self.t0 = time.perf_counter()

    def start(self, job: Job) -> None:
        self.started += 1
        print(f"[{self.started}/{self.total}] start {job.label} (hash {job.hash})", flush=True)

    def end(self, result: JobResult) -> None:
        self.ended += 1
        elapsed = time.perf_counter() - self.t0
        left = self.total - self.ended
        estimate = f", about {duration(elapsed / self.ended * left)} left" if left else ""
        report(result, f"{self.ended}/{self.total} done, {duration(elapsed)} elapsed{estimate}")


def collapse_warning(results: list[JobResult]) -> str:
    """Lines naming the jobs whose model collapsed (predicts almost one class on its source's
    test set), each with why; empty when none did."""
    collapsed = [r for r in results if r.status == "FINISHED" and r.collapsed]
    if not collapsed:
        return ""
    lines = [f"\nWARNING: {len(collapsed)} job(s) finished with a collapsed model (predicting almost one class on "
             f"the source's test set: a learning rate too high or too low, a broken label map?); tagged "
             f"'{schema.COLLAPSED}' on their runs, marked ! in tables:"]
    lines += [f"  {r.label}: {r.collapsed} (run {r.run_id})" for r in collapsed]
    return "\n".join(lines) + "\n"


def summary(results: list[JobResult]) -> str:
    """Per method, this invocation's finished jobs and their mean source and unseen accuracy."""
    rows = []
    for method in dict.fromkeys(r.method for r in results):
        done = [r for r in results if r.method == method and r.status == "FINISHED"]
        if not done:
            continue
        unseen = [r.mean_unseen_acc for r in done if r.mean_unseen_acc is not None]
        source = [r.source_acc for r in done if r.source_acc is not None]
        rows.append([method, len(done), f"{100 * sum(source) / len(source):.2f}" if source else "–",
                     f"{100 * sum(unseen) / len(unseen):.2f}" if unseen else "–"])
    return (tabulate(rows, headers=["method", "jobs", "source acc (mean)", "unseen acc (mean)"], disable_numparse=True)
            if rows else "")


def jobs_at_once(executor: str, options: ExecutorOptions, device: str | None) -> int:
    """How many jobs run at the same time on this machine (the default thread count divides its
    cores among them)."""
    from .executors.pool import gpu_count, pool_size

    if executor == "pool" or (executor == "local" and options.jobs_per_gpu > 1):
        return pool_size(options.workers, options.jobs_per_gpu, gpu_count() if device in (None, "cuda") else 0)
    return options.jobs_per_gpu if executor == "ray" else 1


@dataclass(frozen=True)
class ResumeOptions:
    """How the grid's jobs save their training state (benchmark.training.resume): `benchmark run`'s
    --no-resume, --resume-dir, --resume-every and --resume-mid-epoch."""

    on: bool = True
    folder: str | None = None  # a folder or an artifact URI; None: resume_place's default
    every_s: float = RunContext.resume_every_s  # at epoch ends, at most once per this many seconds
    mid_epoch_s: float | None = None  # also between batches, once this many seconds passed (None: off)

    def check(self) -> None:
        if self.every_s < 0:
            raise BenchmarkError(f"--resume-every {self.every_s}: must be 0 (every epoch) or more seconds")
        if self.mid_epoch_s is not None and self.mid_epoch_s < 0:
            raise BenchmarkError(f"--resume-mid-epoch {self.mid_epoch_s}: must be 0 (every batch) or more seconds")
        if not self.on and self.mid_epoch_s is not None:
            raise BenchmarkError("--resume-mid-epoch with --no-resume: nothing would be saved; give one of them")


def resume_place(store: ResultStore, experiment_id: str, executor: str, named: str | None) -> str:
    """Where the grid's jobs keep their epoch checkpoints: the folder (or artifact URI) named,
    else `resume/` beside a store on this machine, else under the experiment's artifact location
    (a tracking server's: every worker that logs artifacts can reach it), else this machine's
    results folder (said, for executors whose jobs may run on other hosts). The Slurm executor
    keeps them in its shared folder unless named."""
    if named:
        return named if is_remote(named) else str(Path(named).resolve())
    folder = store.local_folder()
    if folder is not None:
        return str((folder / "resume").resolve())
    location = store.artifact_location(experiment_id)
    if location:
        if is_remote(location):
            return f"{location.rstrip('/')}/resume"
        return str(Path(url2pathname(urlparse(location).path) if location.startswith("file:") else location) / "resume")
    if executor == "ray":
        print(f"[resume] the store has no artifact location: epoch checkpoints go to {results_dir() / 'resume'} on "
              "this host; name a shared folder with --resume-dir for jobs on other hosts to resume", flush=True)
    return str((results_dir() / "resume").resolve())


def run_grid(protocol: Protocol, methods: list[str], plan: DataPlan, *, store: ResultStore, executor: str = "local",
             options: ExecutorOptions = ExecutorOptions(), dry_run: bool = False, device: str | None = None,
             command: str = "", threads: int | None = None, system_metrics_s: float | None = None,
             resume: ResumeOptions = ResumeOptions()) -> int:
    """Run (or list) the grid; returns the process exit code (1 when any job failed).

    `resume`: each job saves its training state after an epoch, at most once per `resume.every_s`
    (and inside epochs with `resume.mid_epoch_s`), in `resume.folder` (default
    resume_place(store, experiment, executor, None)), and a later try of a stopped job goes on from there.

    `threads`: torch threads per job, pinned in every executor so that Ray and local runs of a
    job compute alike (default: this machine's cores divided among the jobs run at once here)."""
    run_jobs = EXECUTORS.get(executor)  # a typo fails before any work
    if threads is not None and threads < 1:
        raise BenchmarkError(f"--threads {threads}: must be 1 or more")
    resume.check()
    if threads is None and executor == "slurm" and options.slurm is not None and options.slurm.cpus_per_task:
        threads = max(1, options.slurm.cpus_per_task // options.jobs_per_gpu)  # the compute node's, not this one's
    threads = threads or default_threads(jobs_at_once(executor, options, device))
    skipped_methods = not_applicable(protocol, methods)
    for method, why in skipped_methods.items():
        print(f"[n/a] {why}; its jobs are skipped", flush=True)
    methods = [m for m in methods if m not in skipped_methods]
    if not methods:
        raise BenchmarkError("no method of this grid is applicable: " + "; ".join(skipped_methods.values()))
    jobs = expand(protocol, methods, plan)
    experiment = store.experiment(protocol.name)
    states = store.job_states(jobs, experiment)
    if dry_run:
        print(dry_run_table(states))
        print(f"{len(jobs)} jobs, {sum(s.state == 'FINISHED' for s in states)} already FINISHED "
              f"(experiment {protocol.name!r} in {store.uri})")
        return 0
    todo = []
    for s in states:
        if s.state == "FINISHED":
            print(f"[skip] {s.job.label}: FINISHED already (hash {s.job.hash})", flush=True)
        elif s.state == "RUNNING":
            print(f"[skip] {s.job.label}: RUNNING in another live process (hash {s.job.hash})", flush=True)
        else:
            if s.state == "abandoned":
                store.mark_abandoned(s, experiment)
                print(f"[resume] {s.job.label}: its earlier run was abandoned; running it again", flush=True)
            todo.append(s.job)
    store.close_abandoned_grids(experiment)
    if not todo:  # nothing to run: no empty parent run in the store
        print(f"\n{len(jobs)} jobs, all FINISHED already or running elsewhere; nothing to run.")
        print(next_steps(protocol.name, methods, store.uri, protocol.sources))
        return 0
    parent_log = store.open_grid(experiment, protocol.name, command, protocol.description)
    parent_log.params({"methods": ",".join(methods), "executor": executor, "jobs": len(jobs), "todo": len(todo),
                       "threads_per_job": threads, "jobs_per_gpu": options.jobs_per_gpu, "fuse": options.fuse,
                       "workers": options.workers or ""})
    parent_log.text("protocol.json", json.dumps({**protocol.to_dict(), "not_applicable": skipped_methods}, indent=1,
                                                default=str))
    checkpoints = resume_place(store, experiment, executor, resume.folder) if resume.on else None
    if checkpoints is None:
        print("[resume] off (--no-resume): no epoch checkpoints; a stopped job trains again from its first epoch",
              flush=True)
    parent_log.params({"resume_dir": str(checkpoints) if checkpoints else "off", "resume_every_s": resume.every_s,
                       "resume_mid_epoch_s": "off" if resume.mid_epoch_s is None else resume.mid_epoch_s})
    ctx = RunContext(store, experiment, parent_log.run_id, plan, device, threads,
                     **({} if system_metrics_s is None else {"system_metrics_s": system_metrics_s}),
                     resume_dir=str(checkpoints) if checkpoints else None, resume_named=resume.folder is not None,
                     resume_every_s=resume.every_s, resume_mid_epoch_s=resume.mid_epoch_s)
    started = time.perf_counter()
    progress = Progress(len(todo))
    try:
        results = run_jobs(todo, ctx, options, progress.start, progress.end)
    except BaseException:
        parent_log.finish("KILLED")
        raise
    failed = [r for r in results if r.status == "FAILED"]
    skipped = len(jobs) - len(todo) + sum(r.status == "SKIPPED" for r in results)
    finished = sum(r.status == "FINISHED" for r in results)
    print(f"\n{len(jobs)} jobs: {skipped} skipped, {finished} finished, "
          f"{len(failed)} failed, in {time.perf_counter() - started:.0f}s")
    for r in failed:
        print(f"  FAILED {r.label}: {r.error}")
    print(collapse_warning(results), end="")
    table = summary(results)
    if table:
        print(f"\nThis run's jobs (accuracy %, mean over jobs; unseen: targets other than the source):\n{table}")
    print(next_steps(protocol.name, methods, store.uri, protocol.sources))
    per_method = {}
    for r in results:
        if r.status == "FINISHED" and r.mean_unseen_acc is not None:
            per_method.setdefault(r.method, []).append(r.mean_unseen_acc)
    if per_method:
        parent_log.metrics({f"summary/{m}/mean_unseen_acc": sum(v) / len(v) for m, v in per_method.items()})
    parent_log.finish("FAILED" if failed else "FINISHED")
    return 1 if failed else 0


def next_steps(protocol: str, methods: list[str], uri: str, sources: list[str]) -> str:
    from ..report.tables import default_table

    # default_uri() creates results/: only asked when the store could be that default.
    is_default = not uri.startswith("jsonl:") and uri == default_uri()
    store = "" if is_default else f" --tracking-uri {uri}"
    lines = [f"  benchmark table --protocol {protocol}{store} --out results/{protocol}/{default_table(sources)}.md"]
    if len(methods) >= 2:
        lines.append(f"  benchmark compare {methods[0]} {methods[1]} --protocol {protocol}{store}")
    if not uri.startswith("jsonl:"):
        lines.append(f"  benchmark ui{store}")
    return "\nNext:\n" + "\n".join(lines)
