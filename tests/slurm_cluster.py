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


def require_slurm() -> None:
    """Skip the calling test without Slurm; under CI (BENCHMARK_CI=1), fail instead."""
    import pytest

    absent = missing()
    if absent:
        if os.environ.get("BENCHMARK_CI"):
            pytest.fail(f"Slurm is not installed ({', '.join(absent)} missing); .ci/run installs slurm-wlm and munge")
        pytest.skip(f"Slurm is not installed ({', '.join(absent)} missing): apt-get install slurm-wlm munge")


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
    try:
        subprocess.run([_binary("munged"), "--force", f"--key-file={key}", f"--socket={root}/munge.sock",
                        f"--pid-file={root}/munged.pid", f"--log-file={root}/log/munged.log",
                        f"--seed-file={root}/munge.seed"], check=True, env=env, timeout=30)
        subprocess.run([_binary("slurmctld"), "-i"], check=True, env=env, timeout=30)
        subprocess.run([_binary("slurmd")], check=True, env=env, timeout=30)
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
        stop(root, conf, env)


def stop(root: Path, conf: Path, env: dict, grace_s: float = 60) -> None:
    """Stop the test cluster so that nothing of it is left: its jobs first, then the daemons as
    Slurm means them to be stopped, then SIGKILL to whatever it started and still runs.

    The order matters. scancel sends a job SIGTERM and, KillWait (5 s) later, SIGKILL; a
    submitit task ignores the SIGTERM (submitit bypasses it so that its own `scontrol requeue`
    cannot kill it), so the job lives those seconds. Stopping slurmd and slurmctld before the
    job has ended leaves its slurmstepd processes, which ignore SIGTERM, retrying for ever to
    report the end of their steps (the `slurmstepd: [7.batch]` and `[7.0]` a full suite left:
    the preempted-task scenario's task, whose submitter returns once the result is written,
    still exiting when the module's teardown began). Raises, naming them, if anything is left.
    """
    user = str(os.getuid()) if os.getuid() else "root"
    slurm_daemons = [pid for pid in (_pid_in(root / f"{d}.pid") for d in ("slurmctld", "slurmd")) if pid]
    munged = _pid_in(root / "munged.pid")
    _quietly(["scancel", "--user", user], env)
    _wait_until(lambda: not _queued(env), grace_s)
    _quietly(["scontrol", "shutdown"], env)  # slurmctld and slurmd stop themselves
    _wait_until(lambda: not any(_alive(pid) for pid in slurm_daemons), 20)
    if munged:  # last: the others authenticate through it until they are gone
        _signal(munged, signal.SIGTERM)
        _wait_until(lambda: not _alive(munged), 5)
    for pid, _ in cluster_processes(root, conf):
        _signal(pid, signal.SIGKILL)
    _wait_until(lambda: not cluster_processes(root, conf), 5)
    left = cluster_processes(root, conf)
    if left:
        raise RuntimeError(f"the test Slurm under {root} left {len(left)} process(es) running after SIGKILL: "
                           + "; ".join(f"{pid} {cmd}" for pid, cmd in left))


def cluster_processes(root: Path, conf: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live process the test cluster under `root` started: munged,
    slurmctld, slurmd, their slurmstepd and the jobs' own processes, each of which inherits
    SLURM_CONF=<conf>; or any whose command line or working folder is inside `root`. Never found
    by a process name, which would take another cluster's (or the machine's own) daemons."""
    marker = f"SLURM_CONF={conf}".encode()
    inside = str(root)
    ours = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours or not _alive(int(entry.name)):
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in environ or inside in cmdline or cwd == inside or cwd.startswith(inside + "/"):
            found.append((int(entry.name), cmdline))
    return found


def _pid_in(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _quietly(args: list[str], env: dict) -> subprocess.CompletedProcess | None:
    """A Slurm command whose failure (the controller already gone) is not an error here."""
    try:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _queued(env: dict) -> bool:
    """Any job still in the queue, completing ones included (False once slurmctld is gone)."""
    out = _quietly(["squeue", "--noheader"], env)
    return out is not None and out.returncode == 0 and bool(out.stdout.strip())


def _wait_until(done, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while not done() and time.time() < deadline:
        time.sleep(0.25)
