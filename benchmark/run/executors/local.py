"""The local executor: one job (or fused group of jobs) after another in this process."""

from __future__ import annotations

from ..runner import run_group
from . import EXECUTORS, work_units


@EXECUTORS.register("local")
def run_local(jobs, ctx, options, announce, report):
    if options.jobs_per_gpu > 1 and len(jobs) > 1:  # several jobs per GPU means worker processes
        return EXECUTORS.get("pool")(jobs, ctx, options, announce, report)
    results = []
    for group in work_units(jobs, options):
        for job in group:
            announce(job)
        for result in run_group(group, ctx):
            results.append(result)
            report(result)
    return results
