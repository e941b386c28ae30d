"""`--executor ray` on a Ray cluster of two nodes started with `ray start` on this machine: the
grid's jobs land on both and train at once, each writing its run into the driver's store; the
second node is killed mid-job, and its job is resubmitted to a try that claims it at once and
resumes it from its last epoch checkpoint, and the grid ends with one FINISHED run per job."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from benchmark.store import open_store

from .test_runner import write_protocol

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).with_name("ray")
SECOND_HOST = "ray-node-2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_below(pid: int) -> list:
    import psutil

    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def two_nodes(tmp_path):
    """A Ray head (1 CPU) and a second node (1 CPU) on another host name, each its own raylet;
    the cluster's address, the second node's raylet pid, the environment. Stopped afterwards."""
    pytest.importorskip("ray")
    if not RAY.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        why = "the second node's own host name needs root and unshare (util-linux)"
        pytest.fail(why) if os.environ.get("BENCHMARK_CI") else pytest.skip(why)
    port = free_port()
    # Ray's token authentication, as a cluster should run it: every node and the driver hold the token.
    token = tmp_path / "ray_token"
    token.write_text(uuid.uuid4().hex)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.run([str(RAY), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                           "--include-dashboard", "false", *common],
                          capture_output=True, text=True, env=env, timeout=120)
    assert head.returncode == 0, head.stdout + head.stderr
    import psutil

    before = {p.pid for p in psutil.process_iter() if p.name() == "raylet"}
    # The second node under a host name of its own (a UTS namespace): to the store its jobs run on
    # another machine, whose processes this host cannot see, as on a real cluster.
    start = [str(RAY), "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
             "--resources", '{"second": 1}', *common]
    second = subprocess.run(["unshare", "--uts", "sh", "-c", f'hostname {SECOND_HOST} && exec "$@"', "sh", *start],
                            capture_output=True, text=True, env=env, timeout=120)
    try:
        assert second.returncode == 0, second.stdout + second.stderr
        (raylet,) = [p.pid for p in psutil.process_iter() if p.name() == "raylet" and p.pid not in before]
        yield f"127.0.0.1:{port}", raylet, env
    finally:
        # `ray stop` waits in 2 s steps for the processes it killed; the suite goes on meanwhile,
        # and the session's end waits for it (no Ray process outlives the suite).
        STOPPING.append(subprocess.Popen([str(RAY), "stop", "--force"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=env))


STOPPING: list[subprocess.Popen] = []


@pytest.fixture(scope="session", autouse=True)
def ray_stopped_at_the_end():
    yield
    for proc in STOPPING:
        proc.wait(timeout=120)


def test_a_node_killed_mid_job_has_its_job_resubmitted_and_trained_once(two_nodes, tmp_path):
    address, raylet, env = two_nodes
    protocol = write_protocol(tmp_path, epochs=8)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    grid = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--protocol", str(protocol), "--tracking-uri",
                             uri, "--methods", "erm", "--executor", "ray", "--ray-address", address, "--threads", "1",
                             "--system-metrics-every", "0", "--resume-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    store = open_store(uri)
    deadline = time.time() + 180
    while True:  # until both jobs train, one under the second node's raylet
        assert time.time() < deadline and grid.poll() is None, grid.communicate()[0]
        runs = [r for r in store.runs(store.experiment("tiny"), jobs_only=True) if r.status == "RUNNING"] \
            if (tmp_path / "store.db").exists() and store.experiment("tiny", create=False) else []
        victims = [r for r in runs if r.tags["host"] == SECOND_HOST]
        if len(runs) == 2 and victims and (tmp_path / "resume" / f"{victims[0].tags['job_hash']}.pt").exists():
            break  # its first epoch checkpoint is written
        time.sleep(0.5)
    for proc in processes_below(raylet):  # the node dies: its raylet and its workers, no warning
        proc.send_signal(signal.SIGKILL)
    out, _ = grid.communicate(timeout=300)
    assert grid.returncode == 0, out
    assert "[retry]" in out and "its Ray worker was lost" in out, out
    runs = store.runs(store.experiment("tiny"), jobs_only=True)
    finished = [r for r in runs if r.status == "FINISHED"]
    assert len(finished) == 2 and len({r.tags["job_hash"] for r in finished}) == 2  # one FINISHED run per job
    (lost,) = [r for r in runs if r.status != "FINISHED"]
    assert lost.run_id == victims[0].run_id and lost.status == "FAILED"
    assert lost.tags["error"].startswith("lost with its Ray worker")
    assert not [r for r in runs if r.status == "RUNNING"]
    for run in finished:  # written by the workers straight into the driver's store
        assert "test/synth5.film/acc" in run.metrics and "train/loss" in run.metrics
    (_, survivor) = sorted([lost, *[r for r in finished if r.tags["job_hash"] != lost.tags["job_hash"]]],
                           key=lambda r: r.start_time)
    assert survivor.start_time < lost.end_time  # the two nodes' jobs trained at once
    # The retry went on from the lost try's epoch checkpoint (beside the store, which both nodes
    # see here): it trained only the epochs after it, so no more than one epoch was trained twice.
    (retry,) = [r for r in finished if r.tags["job_hash"] == lost.tags["job_hash"]]
    resumed_at = int(retry.tags["resumed_from"].split()[1])
    assert retry.tags["resumed_from"] == f"epoch {resumed_at} of run {lost.run_id}" and resumed_at >= 1
    assert f"resuming at epoch {resumed_at + 1} from " in out and f"in run {retry.run_id}" in out
    lost_epochs = len(store.metric_history(lost.run_id, "train/loss"))
    assert lost_epochs + (8 - resumed_at) <= 8 + 1
    assert [step for step, _ in store.metric_history(retry.run_id, "train/loss")] == list(range(1, 9))
