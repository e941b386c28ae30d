"""The tracking server goes away in the middle of a grid and comes back: the grid's writes wait
for it (MLflow's bounded retries) and the store ends with one FINISHED run per job, none left
RUNNING."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmark.store import open_store

from .test_runner import free_port, mlflow_server, stop_server as stop, wait_until_healthy, write_protocol


@pytest.mark.slow
def test_a_grid_outlives_the_tracking_server_stopping_and_starting_again(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server(port, tmp_path)
    try:
        wait_until_healthy(uri, server, "mlflow server")
        protocol = write_protocol(tmp_path, epochs=3)
        grid = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--protocol", str(protocol),
                                 "--tracking-uri", uri, "--threads", "1", "--methods", "erm"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        store = open_store(uri)
        deadline = time.time() + 120
        while True:  # the first job is training
            runs = store.runs(store.experiment("tiny"), jobs_only=True) if "tiny" in store.experiment_names() else []
            if any(r.status == "RUNNING" for r in runs):
                break
            assert time.time() < deadline and grid.poll() is None, grid.communicate()[0]
            time.sleep(0.5)
        stop(server)
        # Down for this and the restart (about 8 s in all): the grid's next write meets it, as it
        # cannot finish without writing. Longer would only lengthen MLflow's backoff between retries.
        time.sleep(2)
        server = mlflow_server(port, tmp_path)
        wait_until_healthy(uri, server, "mlflow server")
        out, _ = grid.communicate(timeout=600)
        assert grid.returncode == 0, out
        assert "Retrying" in out and "Connection refused" in out  # the outage met the grid's writes
        runs = store.runs(store.experiment("tiny"), jobs_only=True)
        assert sorted(r.status for r in runs) == ["FINISHED"] * 2, out
        assert len({r.tags["job_hash"] for r in runs}) == 2
    finally:
        stop(server)
