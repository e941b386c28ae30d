"""The local executor: one job after another in this process."""

from __future__ import annotations

from ..runner import run_job
from . import EXECUTORS


@EXECUTORS.register("local")
def run_local(jobs, ctx, options, announce, report):
    if options.jobs_per_gpu > 1 and len(jobs) > 1:  # several jobs per GPU means worker processes
        return EXECUTORS.get("pool")(jobs, ctx, options, announce, report)
    results = []
    for job in jobs:
        announce(job)
        results.append(run_job(job, ctx))
        report(results[-1])
    return results
