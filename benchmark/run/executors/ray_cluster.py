"""The Ray executor: one Ray task per job (or fused group), on a cluster (`--ray-address`) or a local Ray."""

from __future__ import annotations

import os

from ...core.errors import BenchmarkError
from ..runner import run_group
from . import EXECUTORS, for_workers, lost, work_units

# Environment variables a task needs from the driver (data folders, stores, caches).
FORWARDED_ENV = ("BENCHMARK_", "FER_", "MLFLOW_", "HF_")


def task_resources(cluster_gpus: float, jobs_per_gpu: int, threads: int = 1) -> dict[str, float]:
    """What one job asks Ray for: 1/N of a GPU when the cluster has GPUs (N jobs packed on each,
    since one ResNet-18 at batch 32 leaves a large GPU mostly idle), and as many CPUs as the
    job's pinned thread count, so the tasks on a node share its cores instead of oversubscribing."""
    if jobs_per_gpu < 1:
        raise BenchmarkError(f"--jobs-per-gpu {jobs_per_gpu}: must be 1 or more")
    if cluster_gpus:
        return {"num_gpus": 1.0 / jobs_per_gpu, "num_cpus": threads}
    return {"num_cpus": threads}


@EXECUTORS.register("ray")
def run_ray(jobs, ctx, options, announce, report):
    try:
        import ray
    except ImportError:
        raise BenchmarkError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}})
    resources = task_resources(ray.cluster_resources().get("GPU", 0), options.jobs_per_gpu, ctx.threads or 1)
    remote = ray.remote(**resources)(run_group)
    shipped = for_workers(ctx)
    pending = {}
    for group in work_units(jobs, options):
        for job in group:
            announce(job)
        pending[remote.remote(group, shipped)] = group
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            group = pending.pop(ref)
            try:
                group_results = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the worker died (OOM, node lost): its jobs failed
                group_results = [lost(job, exc) for job in group]
            for result in group_results:
                results.append(result)
                report(result)
    return results
