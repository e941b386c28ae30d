"""The Ray executor: one Ray task per job (or fused group), on a cluster (`--ray-address`) or a local Ray.

A task lost with its worker or node (killed, out of memory, the node gone) is resubmitted, up to
LOST_RETRIES times: its runs are first closed as FAILED ("lost with its Ray worker"), since
Ray has said their process is gone, so the new try claims the jobs at once on whichever node it
lands, instead of waiting for their heartbeat to go stale. A task that raised is not retried
(run_group records a job's own errors; what escapes it would fail again).
"""

from __future__ import annotations

import os

from ...core.errors import BenchmarkError
from ..runner import run_group
from . import EXECUTORS, for_workers, lost, work_units

# Environment variables a task needs from the driver (data folders, stores, caches).
FORWARDED_ENV = ("BENCHMARK_", "FER_", "MLFLOW_", "HF_")
LOST_RETRIES = 2  # resubmissions of a task whose worker or node died under it


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
    # Ray's own retries would rerun a lost task while its runs still look alive elsewhere (their
    # heartbeat fresh): the retry would skip them. We resubmit after closing them instead.
    remote = ray.remote(max_retries=0, **resources)(run_group)
    shipped = for_workers(ctx)
    pending = {}
    for group in work_units(jobs, options):
        for job in group:
            announce(job)
        pending[remote.remote(group, shipped)] = (group, 0)
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            group, retries = pending.pop(ref)
            try:
                group_results = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised past run_group: it would again
                group_results = [lost(job, exc) for job in group]
            except ray.exceptions.RayError as exc:  # the worker or its node died (killed, OOM, node lost)
                for job in group:
                    ctx.store.close_lost(ctx.experiment_id, job.hash, ctx.parent_run_id,
                                         f"lost with its Ray worker ({type(exc).__name__})")
                if retries < LOST_RETRIES:
                    print(f"[retry] {', '.join(job.label for job in group)}: its Ray worker was lost "
                          f"({type(exc).__name__}); resubmitted", flush=True)
                    pending[remote.remote(group, shipped)] = (group, retries + 1)
                    continue
                group_results = [lost(job, exc) for job in group]
            for result in group_results:
                results.append(result)
                report(result)
    return results
