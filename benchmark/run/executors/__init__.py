"""Executors: how a grid's jobs run. One interface, three registered implementations; each calls
`benchmark.run.runner.run_job` wherever the job lands.

    local   one job after another in this process
    pool    N worker processes on this machine, one job per worker at a time, each worker pinned
            to one GPU when there are several (`--workers N`, or `--jobs-per-gpu N` per GPU)
    ray     Ray tasks on a cluster (or a local Ray), each asking for 1/jobs-per-gpu of a GPU
    slurm   a Slurm job array through submitit, one task per job (or per jobs-per-gpu jobs)

An executor takes the jobs still to run and returns one JobResult per job; it calls `announce`
before a job starts and `report` when its result is in. With `--fuse K` its unit of work is a
group of up to K jobs (benchmark.jobs.fusion) handed to `run_group`, which trains them as one. A job that raises inside a worker (the
process died, the node was lost) comes back as a FAILED result, never as an exception.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ...core.errors import BenchmarkError
from ...jobs.plan import DataPlan, Job
from ...core.registry import Registry
from ..runner import JobResult, RunContext


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int | None = None  # pool: worker processes (default jobs_per_gpu x GPUs, at least 1)
    jobs_per_gpu: int = 1
    ray_address: str | None = None  # ray: join this cluster (default: start a local one)
    fuse: int = 1  # train up to this many jobs of one method as one fused model (benchmark.jobs.fusion)
    slurm: Any = None  # slurm: its SlurmOptions (benchmark.run.executors.slurm)

    def __post_init__(self) -> None:
        if self.fuse < 1:
            raise BenchmarkError(f"--fuse {self.fuse}: must be 1 or more")
        if self.jobs_per_gpu < 1:
            raise BenchmarkError(f"--jobs-per-gpu {self.jobs_per_gpu}: must be 1 or more")
        if self.workers is not None and self.workers < 1:
            raise BenchmarkError(f"--workers {self.workers}: must be 1 or more")


class Executor(Protocol):
    def __call__(self, jobs: list[Job], ctx: RunContext, options: ExecutorOptions,
                 announce: Callable[[Job], None], report: Callable[[JobResult], None]) -> list[JobResult]: ...


EXECUTORS: Registry[Executor] = Registry("executor")


def for_workers(ctx: RunContext) -> RunContext:
    """The context shipped to worker processes: the data plan without the Samples parsed here
    (workers parse their own; smaller payloads)."""
    plan = DataPlan(ctx.plan.data_root, ctx.plan.dataset_paths, ctx.plan.options, ctx.plan.skip_bad)
    return dataclasses.replace(ctx, plan=plan)


def work_units(jobs: list[Job], options: ExecutorOptions) -> list[list[Job]]:
    """The groups an executor hands to `run_group`: one job each, or fused groups of `options.fuse`."""
    from ...jobs.fusion import fusion_groups

    return fusion_groups(jobs, options.fuse)


def lost(job: Job, exc: BaseException) -> JobResult:
    """The result of a job whose worker died under it."""
    return JobResult(job.hash, job.label, "FAILED", error=f"{type(exc).__name__}: {exc}", method=job.method)


from . import local, pool, ray_cluster, slurm  # noqa: E402,F401  (registration)
