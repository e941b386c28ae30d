"""One training per job, however many processes ask: job states by hash, the claim, the runs a
dead process left (closed as abandoned), opening grid and job runs."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any


from . import schema
from .liveness import Heartbeat, process_alive, process_tags, run_alive
from .records import RunRecord, RunWriter

# How a claimant waits for others who stamped a run at the same moment (benchmark.store.claim).
CLAIM_SETTLE_S = 0.5
ABANDONED = "abandoned: its process ended without finishing"


@dataclass
class JobState:
    job: Any  # benchmark.jobs.plan.Job
    state: str  # "new", "FINISHED", "FAILED", "RUNNING" (alive, or unknown), "abandoned" (known dead)
    run_ids: list[str]


class Claims:
    """The grid's operations on a store, the same for every backend."""

    def job_states(self, jobs: list, experiment_id: str) -> list[JobState]:
        """What the store already says about each job, by its hash."""
        wanted = {j.hash for j in jobs}
        by_hash: dict[str, list[RunRecord]] = {}
        for run in self.runs(experiment_id, jobs_only=True):
            if run.tags.get(schema.JOB_HASH) in wanted:
                by_hash.setdefault(run.tags[schema.JOB_HASH], []).append(run)
        states = []
        for job in jobs:
            runs = by_hash.get(job.hash, [])
            statuses = {r.status for r in runs}
            if "FINISHED" in statuses:
                state = "FINISHED"
            elif "RUNNING" in statuses:
                alive = [run_alive(r.tags) for r in runs if r.status == "RUNNING"]
                state = "abandoned" if all(a is False for a in alive) else "RUNNING"
            elif statuses:
                state = "FAILED"
            else:
                state = "new"
            states.append(JobState(job, state, [r.run_id for r in runs]))
        return states

    def mark_abandoned(self, state: JobState, experiment_id: str) -> None:
        """Close a job's RUNNING runs whose owner is gone as FAILED, saying so."""
        for run in self.runs(experiment_id, job_hash=state.job.hash):
            if run.run_id in state.run_ids and run.status == "RUNNING":
                self._close(run.run_id, "FAILED", ABANDONED)

    def close_lost(self, experiment_id: str, job_hash: str, parent_run_id: str, why: str) -> None:
        """Close as FAILED the job's RUNNING runs under grid `parent_run_id`, whose process its
        executor knows is gone (Ray reported the worker or node dead), so a new try may claim it."""
        for run in self.runs(experiment_id, job_hash=job_hash):
            if run.status == "RUNNING" and run.tags.get(schema.PARENT) == parent_run_id:
                self._close(run.run_id, "FAILED", why)

    def close_abandoned_grids(self, experiment_id: str) -> None:
        """Parent runs of earlier `benchmark run`s on this host whose process died without closing
        them (SIGKILL, power loss) are marked KILLED, as an interrupted run marks its own."""
        for run in self.runs(experiment_id, kind="grid"):
            if run.status == "RUNNING" and process_alive(run.tags) is False:
                self._close(run.run_id, "KILLED", ABANDONED)

    def _close(self, run_id: str, status: str, error: str) -> None:
        log = self.run_log(run_id)
        log.tags({schema.ERROR: error})
        log.finish(status)

    def open_grid(self, experiment_id: str, protocol: str, command: str, description: str = "") -> RunWriter:
        """The parent run of one `benchmark run`."""
        import getpass

        tags = {schema.PROTOCOL: protocol, schema.KIND: "grid", schema.COMMAND: command[:5000],
                schema.USER: getpass.getuser(), schema.DESCRIPTION: f"{description}\n\n`{command}`".strip(),
                **process_tags()}
        return self.create_run(experiment_id, f"grid-{time.strftime('%Y%m%d-%H%M%S')}", tags)

    def open_job(self, experiment_id: str, parent_run_id: str, job) -> RunWriter:
        """A job's run, RUNNING and owned by this process (claim it before training)."""
        tags = {schema.JOB_HASH: job.hash, schema.METHOD: job.method, schema.SOURCE: job.source,
                schema.SEED: str(job.seed), schema.PROTOCOL: job.protocol, schema.PARENT: parent_run_id,
                **({schema.DG_RECIPES: job.recipe.dg_label()} if hasattr(job, "recipe") else {}),
                **{schema.SWEEP_PREFIX + k: str(v) for k, v in getattr(job, "sweep", {}).items()}, **process_tags()}
        return self.create_run(experiment_id, schema.job_run_name(job.method, job.source, job.seed), tags)

    def system_metrics(self, run_id: str, every_s: float) -> contextlib.AbstractContextManager:
        """A context that samples CPU, memory, disk, network (and GPU) use into the run every
        `every_s` seconds while it lasts. Only the MLflow backend records them (MLflow's own
        `system/` metrics); here, and when `every_s` is 0, it records nothing."""
        return contextlib.nullcontext()

    def heartbeat(self, run_id: str, **kwargs) -> Heartbeat:
        """A context that keeps the run's heartbeat fresh (through its own writer)."""
        return Heartbeat(self.run_log(run_id).tags, **kwargs)

    def claim(self, experiment_id: str, job_hash: str, run_id: str, settle_s: float = CLAIM_SETTLE_S) -> str | None:
        """None when run `run_id` holds the job; otherwise who does (a text for the user).

        A store gives no atomic "create if absent", neither a SQLite file nor an MLflow server
        reached over HTTP, so a job is claimed by writing and then reading: the claimant has
        created its RUNNING run, waits `settle_s` for anyone who stamped a run at the same moment
        to finish writing it, then reads every run of that hash. The earliest live RUNNING run
        (by start time, then run id) holds the job; every other claimant sees the same order,
        deletes its own run and skips the job. A FINISHED run means the job is done. Dead
        claimants (process gone on this host, heartbeat stale elsewhere) do not count, so a
        crashed job is taken over. Hosts must agree on the time to within `settle_s`.
        """
        time.sleep(settle_s)
        runs = self.runs(experiment_id, job_hash=job_hash)
        mine = next((r for r in runs if r.run_id == run_id), None)
        others = [r for r in runs if r.run_id != run_id]
        finished = [r for r in others if r.status == "FINISHED"]
        if finished:
            return f"FINISHED already (run {finished[0].run_id})"
        rivals = [r for r in others if r.status == "RUNNING" and run_alive(r.tags) is not False]
        if mine is None or not rivals:
            return None
        first = min([mine, *rivals], key=lambda r: (r.start_time, r.run_id))
        if first is mine:
            return None
        return (f"running in process {first.tags.get(schema.PID, '?')} on host {first.tags.get(schema.HOST, '?')} "
                f"(run {first.run_id})")
