"""`benchmark run`: expand the grid, resume it, execute it (local or Ray), summarise it."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Iterable

from tabulate import tabulate

from .environment import default_threads
from .errors import BenchmarkError
from .jobs import DataPlan, Job, expand
from .protocol import Protocol
from .runner import JobResult, RunContext, run_job
from .store import JobState, ResultStore


def dry_run_table(states: list[JobState]) -> str:
    rows = [[s.job.method, s.job.source, s.job.seed, s.job.hash, s.state] for s in states]
    return tabulate(rows, headers=["method", "source", "seed", "hash", "status"])


def _run_local(jobs: Iterable[Job], ctx: RunContext, announce) -> list[JobResult]:
    results = []
    for job in jobs:
        announce(job)
        results.append(run_job(job, ctx))
        report(results[-1])
    return results


def for_workers(ctx: RunContext) -> RunContext:
    """The context shipped to worker processes: the data plan without the Samples parsed here
    (workers parse their own; smaller payloads)."""
    plan = DataPlan(ctx.plan.data_root, ctx.plan.dataset_paths, ctx.plan.options, ctx.plan.skip_bad)
    return dataclasses.replace(ctx, plan=plan)


def _run_packed(jobs: list[Job], ctx: RunContext, announce, workers: int) -> list[JobResult]:
    """`workers` jobs at a time in their own processes, all on this machine's device: one
    ResNet-18 at batch 32 leaves a large GPU mostly idle, so several jobs share it (each process
    has its own CUDA context, models and memory). Jobs start in the grid's order."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    results = []
    # spawn, not fork: a forked child of a process that touched CUDA cannot use CUDA.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        shipped = for_workers(ctx)
        pending = {}
        for job in jobs:
            announce(job)
            pending[pool.submit(run_job, job, shipped)] = job
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - the worker process died: the job failed
                    results.append(JobResult(job.hash, job.label, "FAILED", error=f"{type(exc).__name__}: {exc}"))
                report(results[-1])
    return results


def task_resources(cluster_gpus: float, jobs_per_gpu: int, threads: int = 1) -> dict[str, float]:
    """What one job asks Ray for: 1/N of a GPU when the cluster has GPUs (N jobs packed on each,
    since one ResNet-18 at batch 32 leaves a large GPU mostly idle), and as many CPUs as the
    job's pinned thread count, so the tasks on a node share its cores instead of oversubscribing."""
    check_jobs_per_gpu(jobs_per_gpu)
    if cluster_gpus:
        return {"num_gpus": 1.0 / jobs_per_gpu, "num_cpus": threads}
    return {"num_cpus": threads}


def check_jobs_per_gpu(jobs_per_gpu: int) -> None:
    if jobs_per_gpu < 1:
        raise BenchmarkError(f"--jobs-per-gpu {jobs_per_gpu}: must be 1 or more")


def _run_ray(jobs: list[Job], ctx: RunContext, announce, address: str | None, jobs_per_gpu: int) -> list[JobResult]:
    try:
        import ray
    except ImportError:
        raise BenchmarkError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                           if k.startswith(("BENCHMARK_", "FER_", "MLFLOW_", "HF_"))}})
    remote = ray.remote(**task_resources(ray.cluster_resources().get("GPU", 0), jobs_per_gpu, ctx.threads))(run_job)
    ctx = for_workers(ctx)
    pending = {}
    for job in jobs:
        announce(job)
        pending[remote.remote(job, ctx)] = job
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            job = pending.pop(ref)
            try:
                results.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - the worker died (OOM, node lost): the job failed
                results.append(JobResult(job.hash, job.label, "FAILED", error=f"{type(exc).__name__}: {exc}"))
            report(results[-1])
    return results


def report(result: JobResult) -> None:
    if result.status == "SKIPPED":
        print(f"[skip] {result.label}: {result.error}", flush=True)
    elif result.status == "FINISHED":
        print(f"[done] {result.label}: {result.seconds:.0f}s, source acc {100 * result.source_acc:.2f}, "
              f"mean acc {100 * result.mean_target_acc:.2f} (run {result.run_id})", flush=True)
    else:
        print(f"[FAILED] {result.label}: {result.error} (run {result.run_id})", flush=True)


def run_grid(protocol: Protocol, methods: list[str], plan: DataPlan, *, store: ResultStore, executor: str = "local",
             dry_run: bool = False, device: str | None = None, ray_address: str | None = None,
             jobs_per_gpu: int = 1, command: str = "", threads: int | None = None) -> int:
    """Run (or list) the grid; returns the process exit code (1 when any job failed).

    `threads`: torch threads per job, pinned in every executor so that Ray and local runs of a
    job compute alike (default: this machine's cores divided among the jobs run at once here)."""
    check_jobs_per_gpu(jobs_per_gpu)
    if threads is not None and threads < 1:
        raise BenchmarkError(f"--threads {threads}: must be 1 or more")
    threads = threads or default_threads(jobs_per_gpu)
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
                       "threads_per_job": threads, "jobs_per_gpu": jobs_per_gpu})
    parent_log.text("protocol.json", json.dumps(protocol.to_dict(), indent=1, default=str))
    ctx = RunContext(store, experiment, parent_log.run_id, plan, protocol.to_dict(), device, threads)
    started = time.perf_counter()

    def announce(job: Job) -> None:
        print(f"[start] {job.label} (hash {job.hash})", flush=True)

    try:
        if executor == "ray":
            results = _run_ray(todo, ctx, announce, ray_address, jobs_per_gpu)
        elif jobs_per_gpu > 1 and len(todo) > 1:
            results = _run_packed(todo, ctx, announce, jobs_per_gpu)
        else:
            results = _run_local(todo, ctx, announce)
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
