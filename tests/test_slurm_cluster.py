"""The test Slurm (tests/slurm_cluster.py) leaves nothing behind: a job still running when the
cluster stops, whose task ignores SIGTERM as a submitit task does, ends with it, and so do the
daemons and every slurmstepd (a teardown that stopped the daemons first left slurmd and the
job's slurmstepd processes running for good)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .slurm_cluster import cluster_processes, require_slurm, slurm_cluster

pytestmark = pytest.mark.slow

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def test_a_job_running_when_the_cluster_stops_leaves_no_process(tmp_path):
    require_slurm()
    root = tmp_path / "slurm"
    conf = root / "slurm.conf"
    with slurm_cluster(root) as env:
        subprocess.run(["sbatch", "--wrap", f"srun {sys.executable} -c '{IGNORES_SIGTERM}'"], env=env, check=True,
                       capture_output=True, cwd=tmp_path)
        def started(running: list[str]) -> bool:  # the task itself, and the step daemon of its srun step
            return (any(cmd.startswith(sys.executable) and "time.sleep(600)" in cmd for cmd in running)
                    and any(cmd.startswith("slurmstepd: [1.0]") for cmd in running))

        deadline = time.time() + 60
        while not started(running := [cmd for _, cmd in cluster_processes(root, conf)]):
            assert time.time() < deadline, f"the job's task did not start: {running}"
            time.sleep(0.5)
        assert any(cmd.startswith("slurmstepd: [1.batch]") for cmd in running), running
        assert any(cmd.startswith("/usr/sbin/slurmd") or cmd.endswith("slurmd") for cmd in running), running
    assert cluster_processes(root, conf) == []
