"""`benchmark run`: expand the grid, resume it, execute it (benchmark.executors), summarise it."""

from __future__ import annotations

import json
import time

from tabulate import tabulate

from .environment import default_threads
from .errors import BenchmarkError
from .jobs import DataPlan, Job, expand
from .protocol import Protocol
from .executors import EXECUTORS, ExecutorOptions
from .runner import JobResult, RunContext
from .store import JobState, ResultStore


def dry_run_table(states: list[JobState]) -> str:
    from .sweep import label

    rows = [[s.job.method, s.job.source, s.job.seed, s.job.hash, s.state] for s in states]
    headers = ["method", "source", "seed", "hash", "status"]
    if any(s.job.sweep for s in states):
        rows = [row + [label(s.job.sweep)] for row, s in zip(rows, states)]
        headers.append("sweep point")
    return tabulate(rows, headers=headers)


def report(result: JobResult) -> None:
    if result.status == "SKIPPED":
        print(f"[skip] {result.label}: {result.error}", flush=True)
    elif result.status == "FINISHED":
        print(f"[done] {result.label}: {result.seconds:.0f}s, source acc {100 * result.source_acc:.2f}, "
              f"mean acc {100 * result.mean_target_acc:.2f} (run {result.run_id})", flush=True)
    else:
        print(f"[FAILED] {result.label}: {result.error} (run {result.run_id})", flush=True)


def jobs_at_once(executor: str, options: ExecutorOptions, device: str | None) -> int:
    """How many jobs run at the same time on this machine (the default thread count divides its
    cores among them)."""
    from .executors.pool import gpu_count, pool_size

    if executor == "pool" or (executor == "local" and options.jobs_per_gpu > 1):
        return pool_size(options.workers, options.jobs_per_gpu, gpu_count() if device in (None, "cuda") else 0)
    return options.jobs_per_gpu if executor == "ray" else 1


def run_grid(protocol: Protocol, methods: list[str], plan: DataPlan, *, store: ResultStore, executor: str = "local",
             options: ExecutorOptions = ExecutorOptions(), dry_run: bool = False, device: str | None = None,
             command: str = "", threads: int | None = None) -> int:
    """Run (or list) the grid; returns the process exit code (1 when any job failed).

    `threads`: torch threads per job, pinned in every executor so that Ray and local runs of a
    job compute alike (default: this machine's cores divided among the jobs run at once here)."""
    run_jobs = EXECUTORS.get(executor)  # a typo fails before any work
    if threads is not None and threads < 1:
        raise BenchmarkError(f"--threads {threads}: must be 1 or more")
    threads = threads or default_threads(jobs_at_once(executor, options, device))
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
    parent_log = store.open_grid(experiment, protocol.name, command)
    parent_log.params({"methods": ",".join(methods), "executor": executor, "jobs": len(jobs), "todo": len(todo),
                       "threads_per_job": threads, "jobs_per_gpu": options.jobs_per_gpu,
                       "workers": options.workers or ""})
    parent_log.text("protocol.json", json.dumps(protocol.to_dict(), indent=1, default=str))
    ctx = RunContext(store, experiment, parent_log.run_id, plan, device, threads)
    started = time.perf_counter()

    def announce(job: Job) -> None:
        print(f"[start] {job.label} (hash {job.hash})", flush=True)

    try:
        results = run_jobs(todo, ctx, options, announce, report)
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
    parent_log.finish("FAILED" if failed else "FINISHED")
    return 1 if failed else 0
