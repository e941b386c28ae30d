"""A real one-node Slurm for the tests: munged, slurmctld and slurmd of Debian's slurm-wlm and
munge packages, started in a temporary folder with a slurm.conf written for this host (CPUs as
asked, by default its own; no GPUs), stopped afterwards. `.ci/run` installs the packages; without
them the tests that use it skip, except under CI (BENCHMARK_CI=1), where they fail."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue")


def missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def write_conf(root: Path, host: str, cpus: int, memory_mb: int) -> Path:
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    user = "root" if os.getuid() == 0 else os.environ.get("USER", "nobody")
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=benchtest
SlurmctldHost={host}
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
MinJobAge=600
KillWait=5
OverTimeLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    return conf


@contextmanager
def slurm_cluster(root: Path, cpus: int | None = None, timeout_s: float = 60):
    """Start the daemons under `root`; yield the environment (SLURM_CONF) to run sbatch with.
    `cpus`: what the node declares (config_overrides lets slurmd declare more than it has)."""
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    conf = write_conf(root, host, cpus, memory_mb)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    started = []
    try:
        subprocess.run([_binary("munged"), "--force", f"--key-file={key}", f"--socket={root}/munge.sock",
                        f"--pid-file={root}/munged.pid", f"--log-file={root}/log/munged.log",
                        f"--seed-file={root}/munge.seed"], check=True, env=env, timeout=30)
        started.append(root / "munged.pid")
        subprocess.run([_binary("slurmctld"), "-i"], check=True, env=env, timeout=30)
        started.append(root / "slurmctld.pid")
        subprocess.run([_binary("slurmd")], check=True, env=env, timeout=30)
        started.append(root / "slurmd.pid")
        deadline = time.time() + timeout_s
        while True:
            out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, env=env)
            if out.stdout.strip() == "idle":
                break
            if time.time() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in (root / "log").glob("*.log"))
                raise RuntimeError(f"the test Slurm did not come up (sinfo: {out.stdout!r} {out.stderr!r}):\n{logs}")
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--user", str(os.getuid()) if os.getuid() else "root"], env=env,
                       capture_output=True)
        for pid_file in reversed(started):
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        time.sleep(0.5)
