"""`--executor slurm` against a real one-node Slurm (tests/slurm_cluster.py): a grid ends with one
FINISHED run per job, a submitter killed and started again submits nothing twice, a preempted task
is requeued and its job resumes from its last epoch, and a task that runs past its time limit is
requeued, resumes, and is then reported with Slurm's reason.

Slurm looks at time limits every 30 s, so the time-limit scenario spends minutes waiting;
it starts with the module, in the background, and the other scenarios run meanwhile (the test
node declares more CPUs than this host has, so that their tasks are not queued behind it). Each
scenario touches only its own Slurm jobs (their ids from its submitted.jsonl)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmark.core.errors import BenchmarkError
from benchmark.run.executors.slurm import slurm_options, submitted
from benchmark.store import open_store

from .slurm_cluster import require_slurm, slurm_cluster
from .test_runner import write_protocol

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    require_slurm()
    # Two CPUs more than this host has: the background time-limit task holds one throughout.
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), cpus=(os.cpu_count() or 1) + 2) as env:
        yield env


@pytest.fixture(scope="module", autouse=True)
def time_limit_scenario(slurm_env, tmp_path_factory):
    """The time-limit scenario, started with the module's first test (see the module's doc)."""
    with ThreadPoolExecutor(1) as pool:
        folder = tmp_path_factory.mktemp("time-limit")
        # Its own core slots: a task holds one of this machine's slots while it trains (benchmark.core.cores).
        env = {**slurm_env, "BENCHMARK_SLOTS": str(folder / "core-slots")}
        future = pool.submit(run_past_time_limit, env, folder)
        yield future
        future.result(timeout=480)  # never leave its submitter running past the module


def command(protocol: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmark", "run", "--protocol", str(protocol), "--tracking-uri",
            f"jsonl:{tmp_path}/runs", "--executor", "slurm", "--threads", "1", "--slurm", f"folder={tmp_path}/slurm",
            "--resume-every", "0", *extra]


def own_ids(tmp_path: Path) -> list[str]:
    """The Slurm ids (array_task) of this scenario's tasks, from its submitted.jsonl."""
    return sorted(set(submitted(tmp_path / "slurm" / "tiny").values()))


def wait_until_gone(ids: list[str], env: dict, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while subprocess.run(["squeue", "--noheader", "--jobs", ",".join(ids)], capture_output=True, text=True,
                         env=env).stdout.strip():
        assert time.time() < deadline, f"Slurm jobs {ids} did not end"
        time.sleep(1)


def job_runs(tmp_path: Path):
    store = open_store(f"jsonl:{tmp_path}/runs")
    return store.runs(store.experiment("tiny"), jobs_only=True)


def start_until_training(args: list[str], tmp_path: Path, env: dict) -> subprocess.Popen:
    """Start a submitter; return once its one job's run is RUNNING (its task claimed it)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while not [r for r in (job_runs(tmp_path) if (tmp_path / "runs").exists() else []) if r.status == "RUNNING"]:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.5)
    return proc


def test_slurm_options_come_from_config_and_flags_and_bad_ones_are_named(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text('[slurm]\npartition = "gpu"\ntime_min = 120\nconstraint = "a100"\nmem_gb = 32\n')
    options = slurm_options(str(config), ["time_min=30", "exclude=node7"])
    assert (options.partition, options.time_min, options.mem_gb) == ("gpu", 30, 32)
    assert options.directives == {"constraint": "a100", "exclude": "node7"}
    with pytest.raises(BenchmarkError, match="cluster.toml: slurm.time_min"):
        config.write_text('[slurm]\ntime_min = "long"\n')
        slurm_options(str(config), [])
    with pytest.raises(BenchmarkError, match="KEY=VALUE"):
        slurm_options(None, ["partition"])


def test_grid_through_slurm_ends_with_one_finished_run_per_job(slurm_env, tmp_path):
    protocol = write_protocol(tmp_path)
    out = subprocess.run(command(protocol, tmp_path, "--methods", "erm", "--slurm", "array_parallelism=2"),
                         capture_output=True, text=True, env=slurm_env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 2 Slurm task(s)" in out.stdout
    runs = job_runs(tmp_path)
    hashes = {r.tags["job_hash"] for r in runs}
    assert len(hashes) == 2 and sorted(r.status for r in runs) == ["FINISHED", "FINISHED"]
    record = submitted(tmp_path / "slurm" / "tiny")
    assert set(record) == hashes
    logs = list((tmp_path / "slurm" / "tiny").rglob("*_log.out"))
    assert len(logs) == 2  # one log per task, in the folder the grid's run names


def test_submitter_killed_and_started_again_submits_nothing_twice(slurm_env, tmp_path):
    protocol = write_protocol(tmp_path, epochs=4)
    args = command(protocol, tmp_path, "--methods", "erm", "--slurm", "array_parallelism=1")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm_env)
    record = tmp_path / "slurm" / "tiny" / "submitted.jsonl"
    deadline = time.time() + 120
    while not (record.is_file() and len(record.read_text().splitlines()) == 2):
        assert time.time() < deadline and first.poll() is None, first.communicate()[0]
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)  # the login-node process dies; the array lives on
    first.wait()
    again = subprocess.run(args, capture_output=True, text=True, env=slurm_env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted" not in again.stdout.replace("(submitted earlier)", ""), again.stdout
    assert again.stdout.count("[skip]") == 2, again.stdout  # one running (claimed), one queued in Slurm
    wait_until_gone(own_ids(tmp_path), slurm_env)
    runs = [r for r in job_runs(tmp_path) if r.status == "FINISHED"]
    assert len(runs) == 2 and len({r.tags["job_hash"] for r in runs}) == 2
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(lines) == 2 and len({line["hash"] for line in lines}) == 2  # each job submitted once


def requeue_now(job_id: str, env: dict, proc: subprocess.Popen) -> None:
    """Wait until Slurm has requeued `job_id` (PENDING again), then start it now: Slurm holds a
    requeued batch job back for two minutes (its BeginTime)."""
    deadline = time.time() + 180
    while "PENDING" not in subprocess.run(["squeue", "--noheader", "--format=%T", "--jobs", job_id], capture_output=True,
                                          text=True, env=env).stdout:
        assert time.time() < deadline and proc.poll() is None, "the task was not requeued"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, env=env)


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen) -> None:
    """Until a job has saved its first epoch (benchmark.training.resume)."""
    deadline = time.time() + 120
    while not list(folder.glob("*.pt")):
        assert time.time() < deadline and proc.poll() is None, "no epoch checkpoint was written"
        time.sleep(0.5)


def run_past_time_limit(env: dict, tmp_path: Path) -> tuple[Path, int, str]:
    """A one-job grid under a two-minute limit with one time-out requeue; (folder, exit code, output).
    Two minutes, not one: Slurm's clock starts before the task's Python does, and on a loaded
    2-core machine a one-minute task reached its warning (at 45 s) before its first epoch ended, so
    the requeued try had nothing to resume (seen in CI); at two minutes the warning comes at 90 s."""
    protocol = write_protocol(tmp_path, epochs=500)  # minutes of training: the limit stops it, twice
    proc = start_until_training(command(protocol, tmp_path, "--methods", "erm", "--sources", "synth5/studio",
                                        "--slurm", "time_min=2", "--slurm", "timeout_requeues=1"), tmp_path, env)
    try:
        requeue_now(own_ids(tmp_path)[0], env, proc)
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    return tmp_path, proc.returncode, out


def test_task_killed_without_warning_is_reported_not_waited_for(slurm_env, tmp_path):
    protocol = write_protocol(tmp_path, epochs=500)
    proc = start_until_training(command(protocol, tmp_path, "--methods", "erm", "--sources", "synth5/studio"),
                                tmp_path, slurm_env)
    subprocess.run(["scancel", "--signal=KILL", "--full", *own_ids(tmp_path)], check=True, env=slurm_env)
    out, _ = proc.communicate(timeout=120)  # the submitter notices the task is gone and ends
    assert proc.returncode == 1, out
    failed = [line for line in out.splitlines() if line.startswith("[FAILED]")]
    assert len(failed) == 1 and "Slurm" in failed[0], out


def test_preempted_task_is_requeued_resumes_from_its_epoch_and_its_job_finishes_once(slurm_env, tmp_path):
    protocol = write_protocol(tmp_path, epochs=8)
    proc = start_until_training(command(protocol, tmp_path, "--methods", "erm", "--sources", "synth5/studio",
                                        "--slurm", "time_min=120"),  # far from its limit: USR2 means preemption
                                tmp_path, slurm_env)
    resume = tmp_path / "slurm" / "tiny" / "resume"
    wait_for_checkpoint(resume, proc)
    ids = own_ids(tmp_path)
    subprocess.run(["scancel", "--signal=USR2", *ids], check=True, env=slurm_env)  # Slurm's preemption warning
    requeue_now(ids[0], slurm_env, proc)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    runs = {r.status: r for r in job_runs(tmp_path)}
    assert sorted(runs) == ["FINISHED", "KILLED"], out  # the preempted try, then the requeued one
    assert runs["KILLED"].tags["error"].startswith("stopped (SystemExit")
    finished = runs["FINISHED"]
    resumed_after = int(finished.tags["resumed_from"].split()[1])
    assert 1 <= resumed_after < 8 and runs["KILLED"].run_id in finished.tags["resumed_from"]
    store = open_store(f"jsonl:{tmp_path}/runs")
    steps = [step for step, _ in store.metric_history(finished.run_id, "train/loss")]
    assert steps == list(range(1, 9))  # every epoch once: copied up to the checkpoint, trained after it
    assert not list(resume.glob("*.pt"))  # a FINISHED job leaves no checkpoint


def test_task_past_its_time_limit_is_requeued_resumes_and_is_then_reported_with_slurms_reason(
        time_limit_scenario: Future):
    tmp_path, returncode, out = time_limit_scenario.result(timeout=480)
    assert returncode == 1, out
    failed = [line for line in out.splitlines() if line.startswith("[FAILED]")]
    assert len(failed) == 1 and "Slurm time limit reached (120 s)" in failed[0], out
    runs = {r.status: r for r in job_runs(tmp_path)}
    assert sorted(runs) == ["FAILED", "KILLED"]  # each try closed by its own process at the warning
    assert runs["FAILED"].tags["resumed_from"].startswith("epoch ")  # the second try went on from the first's
    # Out of requeues: the checkpoint stays, so the same command with a longer limit resumes.
    assert len(list((tmp_path / "slurm" / "tiny" / "resume").glob("*.pt"))) == 1
