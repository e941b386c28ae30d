"""Summarise a grid's MLflow experiment as JSON: runs per job, their statuses and times.

    python scripts/grid_summary.py EXPERIMENT OUT.json   (store: $MLFLOW_TRACKING_URI)

Exits 1 unless every job has exactly one run and it FINISHED (what the GPU check asks of its grid).
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

from mlflow.tracking import MlflowClient


def main(experiment: str, out: str) -> int:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    jobs = defaultdict(list)
    grids = []
    for run in runs:
        row = {"run_id": run.info.run_id, "status": run.info.status,
               "seconds": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None}
        if run.data.tags.get("kind") == "grid":
            grids.append(row)
            continue
        row.update(method=run.data.tags.get("method"), source=run.data.tags.get("source"),
                   pid=run.data.tags.get("pid"), mean_acc=run.data.metrics.get("test/mean_acc"),
                   epoch_seconds=run.data.metrics.get("train/epoch_seconds"),
                   error=run.data.tags.get("error"))
        jobs[run.data.tags["job_hash"]].append(row)
    ok = all(len(r) == 1 and r[0]["status"] == "FINISHED" for r in jobs.values())
    summary = {"experiment": experiment, "jobs": len(jobs), "runs": sum(len(r) for r in jobs.values()),
               "finished": sum(r["status"] == "FINISHED" for rs in jobs.values() for r in rs),
               "one_finished_run_per_job": ok, "processes": len({r["pid"] for rs in jobs.values() for r in rs}),
               "grid_runs": grids, "job_runs": dict(jobs)}
    with open(out, "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"{summary['jobs']} jobs, {summary['runs']} runs, {summary['finished']} FINISHED, "
          f"{summary['processes']} processes; one FINISHED run per job: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
