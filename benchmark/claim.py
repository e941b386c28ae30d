"""One job, one training: how concurrent processes agree on who trains a job.

A store gives no atomic "create if absent", neither a SQLite file nor an MLflow server reached
over HTTP, so a job is claimed by writing and then reading: the process creates the job's run
(RUNNING, tagged with the job hash, its host and pid), waits CLAIM_SETTLE_S for anyone who
stamped a run at the same moment to finish writing it, then reads every run of that hash.
The earliest live RUNNING run (by start time, then run id) holds the job; every other claimant
sees the same order, deletes its own run and skips the job. A FINISHED run means the job is
done. Dead claimants (their process gone on this host, their heartbeat stale elsewhere) do not
count, so a crashed job is taken over. The order comes from the claimants' clocks: hosts must
agree on the time to within CLAIM_SETTLE_S (NTP does far better).
"""

from __future__ import annotations

import time

from . import tracking

CLAIM_SETTLE_S = 0.5


def holder_other_than(client, experiment_id: str, job_hash: str, run_id: str,
                      settle_s: float = CLAIM_SETTLE_S) -> str | None:
    """None when run `run_id` holds the job; otherwise who does (a text for the user)."""
    time.sleep(settle_s)
    runs = tracking.retry(lambda: client.search_runs([experiment_id], f"tags.job_hash = '{job_hash}'",
                                                     max_results=1000))
    mine = next((r for r in runs if r.info.run_id == run_id), None)
    others = [r for r in runs if r.info.run_id != run_id]
    finished = [r for r in others if r.info.status == "FINISHED"]
    if finished:
        return f"FINISHED already (run {finished[0].info.run_id})"
    rivals = [r for r in others if r.info.status == "RUNNING" and tracking.run_alive(r.data.tags) is not False]
    if mine is None or not rivals:
        return None
    first = min([mine, *rivals], key=lambda r: (r.info.start_time, r.info.run_id))
    if first is mine:
        return None
    tags = first.data.tags
    return (f"running in process {tags.get('pid', '?')} on host {tags.get('host', '?')} "
            f"(run {first.info.run_id})")
