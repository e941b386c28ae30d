"""Summarise a grid's experiment as JSON: runs per job, their statuses and times.

    python scripts/grid_summary.py EXPERIMENT OUT.json   (store: $MLFLOW_TRACKING_URI)

Exits 1 unless every job has exactly one run and it FINISHED (what the GPU check asks of its grid).
Also lists the MLflow system metrics (`system/...`) the job runs recorded, GPU ones included.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from benchmark.store import open_store, schema


def main(experiment: str, out: str) -> int:
    store = open_store()
    exp = store.experiment(experiment, create=False)
    jobs = defaultdict(list)
    grids = []
    for run in store.runs(exp):
        row = {"run_id": run.run_id, "status": run.status,
               "seconds": (run.end_time - run.start_time) / 1000 if run.end_time else None}
        if run.tags.get(schema.KIND) == "grid":
            grids.append(row)
            continue
        row.update(method=run.tags.get(schema.METHOD), source=run.tags.get(schema.SOURCE),
                   pid=run.tags.get(schema.PID), mean_acc=run.metrics.get(schema.MEAN_ACC),
                   epoch_seconds=run.metrics.get("train/epoch_seconds"), error=run.tags.get(schema.ERROR),
                   system={k: v for k, v in run.metrics.items() if k.startswith("system/")})
        jobs[run.tags[schema.JOB_HASH]].append(row)
    ok = all(len(r) == 1 and r[0]["status"] == "FINISHED" for r in jobs.values())
    summary = {"experiment": experiment, "jobs": len(jobs), "runs": sum(len(r) for r in jobs.values()),
               "finished": sum(r["status"] == "FINISHED" for rs in jobs.values() for r in rs),
               "one_finished_run_per_job": ok, "processes": len({r["pid"] for rs in jobs.values() for r in rs}),
               "runs_with_system_metrics": sum(bool(r["system"]) for rs in jobs.values() for r in rs),
               "runs_with_gpu_system_metrics": sum(any(k.startswith("system/gpu") for k in r["system"])
                                                   for rs in jobs.values() for r in rs),
               "grid_runs": grids, "job_runs": dict(jobs)}
    with open(out, "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"{summary['jobs']} jobs, {summary['runs']} runs, {summary['finished']} FINISHED, "
          f"{summary['processes']} processes; one FINISHED run per job: {ok}; system metrics on "
          f"{summary['runs_with_system_metrics']} runs (GPU ones on {summary['runs_with_gpu_system_metrics']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
