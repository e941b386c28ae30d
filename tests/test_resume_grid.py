"""Resume on the executors, end to end: a grid's job killed with SIGKILL after its third of six
epochs (a power cut: no handler runs; on the local executor inside the fourth, with checkpoints
between batches) is run again by the same command; the new try goes on from the checkpoint
beside the store, says so in one line, and ends bit for bit where an uninterrupted run of the
job ends (same machine, same threads), with one FINISHED run whose history has every epoch once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from benchmark.cli import main
from benchmark.store import ABANDONED, open_store, schema
from benchmark.training.resume import ResumePoint

from .test_runner import TINY

EPOCHS = 6


def protocol(tmp: Path) -> Path:
    path = tmp / "tiny.toml"
    path.write_text(TINY.format(epochs=EPOCHS, extra_datasets="", extra_sources=""))
    return path


def run_args(protocol_file: Path, uri: str, executor: str, *extra: str) -> list[str]:
    return ["run", "--protocol", str(protocol_file), "--tracking-uri", uri, "--methods", "erm", "--sources",
            "synth5/studio", "--threads", "1", "--executor", executor, *(["--workers", "1"] if executor == "pool" else []),
            "--resume-every", "0", *extra]  # epochs of a second: saved all the same


def fused_args(protocol_file: Path, uri: str) -> list[str]:
    return ["run", "--protocol", str(protocol_file), "--tracking-uri", uri, "--methods", "erm", "--sources",
            "synth5/studio", "--seeds", "0,1", "--threads", "1", "--fuse", "2", "--resume-every", "0",
            "--resume-mid-epoch", "0"]


def finished(uri: str):
    store = open_store(uri)
    runs = [r for r in store.runs(store.experiment("tiny"), jobs_only=True) if r.status == "FINISHED"]
    return store, runs


def weights(store, run_id: str, tmp: Path) -> dict:
    folder = store.checkpoint(run_id, tmp / run_id)
    return flat(torch.load(folder / "state_dict.pt", weights_only=True))


def flat(tree, prefix: str = "") -> dict:
    """The leaves (tensors, numbers, names) of a nested state dict by dotted path."""
    if not isinstance(tree, (dict, list, tuple)):
        return {prefix: tree}
    out = {}
    for key, value in (tree.items() if isinstance(tree, dict) else enumerate(tree)):
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def saved(folder: Path, pattern: str) -> tuple[Path | None, dict]:
    """The checkpoint matching `pattern` in `folder` and its state ({} when none is readable yet)."""
    for path in sorted(folder.glob(pattern), reverse=True):  # a tracking server's: the newest write first
        try:
            return path, torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - being replaced
            pass
    return None, {}


@dataclass
class FirstTry:
    """A scenario's first try: its store, command, and what its checkpoint held when it was killed."""

    tmp: Path
    uri: str
    args: list[str]
    pattern: str  # its checkpoint's file name
    ready: Callable[[Path, dict], bool]  # killed once its checkpoint (file, state) satisfies this
    process: subprocess.Popen | None = None
    path: Path | None = None
    state: dict | None = None
    why: str = ""  # why it was not killed as planned
    folder: Path | None = None  # where its checkpoint appears (default: resume/ beside its store)

    def __post_init__(self):
        self.folder = self.folder or self.tmp / "resume"


def watch(tries: list[FirstTry]) -> None:
    """SIGKILL each try's process group (the run and a pool's worker: a power cut, no handler
    runs) once its checkpoint is ready. Each new write is read with the group stopped (SIGSTOP),
    so what the kill leaves is exactly the state read: if it is not ready, the group goes on."""
    deadline = time.time() + 300
    seen: dict[Path, float] = {}
    waiting = list(tries)
    while waiting:
        for first in list(waiting):
            group, ended = first.process.pid, first.process.poll() is not None
            path = next(first.folder.glob(first.pattern), None)
            if not ended and time.time() < deadline:
                try:
                    written = path.stat().st_mtime_ns if path else None
                except FileNotFoundError:
                    written = None
                if written is None or seen.get(first.tmp) == written:
                    continue
                seen[first.tmp] = written
                os.killpg(group, signal.SIGSTOP)
                path, state = saved(first.folder, first.pattern)
                if not (state and first.ready(path, state)):
                    os.killpg(group, signal.SIGCONT)
                    continue
                first.path, first.state = path, state
            else:
                first.why = "it ended before being killed" if ended else "it stalled"
            with contextlib.suppress(ProcessLookupError):  # ended: its group may be gone
                os.killpg(group, signal.SIGKILL)
            first.process.wait()
            waiting.remove(first)
        time.sleep(0.02)


def second_job_inside_epoch_4() -> Callable[[Path, dict], bool]:
    """Ready once the grid's second job (its checkpoint a file other than the first one seen)
    has a state written inside its fourth epoch."""
    first_file: list[str] = []

    def ready(path: Path, state: dict) -> bool:
        first_file[:] = first_file or [path.name]
        return path.name != first_file[0] and state["epoch"] >= 3 and "in_epoch" in state

    return ready


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """Every scenario's first try, started at once (most of each one's time is its process's
    start) and killed by a watcher thread, while this process trains the uninterrupted runs.

    local: a grid of two jobs, killed after the first FINISHED, inside the second's epoch 4
    (`--resume-mid-epoch 0` writes between batches); a fused group of 2 (the same), killed inside
    epoch 4; pool: killed once epoch 3's checkpoint is written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    tries = {}
    for name in ("local", "pool", "fused"):
        tmp = tmp_path_factory.mktemp(name)
        uri = f"sqlite:///{tmp / 'store.db'}"
        if name == "fused":
            tries[name] = FirstTry(tmp, uri, fused_args(protocol(tmp), uri), "fused-*.pt",
                                   lambda path, state: state["epoch"] >= 3 and "in_epoch" in state)
        elif name == "local":  # two jobs: seed 1 ends, seed 0 is killed
            tries[name] = FirstTry(tmp, uri, run_args(protocol(tmp), uri, name, "--seeds", "1,0", "--resume-mid-epoch",
                                                      "0"), "*.pt", second_job_inside_epoch_4())
        else:
            tries[name] = FirstTry(tmp, uri, run_args(protocol(tmp), uri, name), "*.pt",
                                   lambda path, state: state["epoch"] >= 3)
    for first in tries.values():
        first.process = subprocess.Popen([sys.executable, "-m", "benchmark", *first.args], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    watcher = threading.Thread(target=watch, args=(list(tries.values()),))
    watcher.start()
    try:
        plain = tmp_path_factory.mktemp("plain")
        uri = f"sqlite:///{plain / 'store.db'}"
        assert main(run_args(protocol(plain), uri, "local")) == 0
        store, (run,) = finished(uri)
        single = (run, weights(store, run.run_id, plain), store)
        fused_plain = tmp_path_factory.mktemp("fused_plain")
        uri = f"sqlite:///{fused_plain / 'store.db'}"
        assert main(fused_args(protocol(fused_plain), uri)) == 0
        store, runs = finished(uri)
        assert len(runs) == 2 and all(r.params[schema.FUSED] == "2" for r in runs)
        fused = (runs, store, fused_plain)
    finally:
        watcher.join()
    return tries, single, fused


def resumed_line(out: str, first: FirstTry, times: int = 1) -> str:
    """The one line (per job) that says where the second try goes on, as the checkpoint says."""
    at = ResumePoint(first.path, first.state["job_hash"], "probe", first.state).resumes_at()
    lines = [line for line in out.splitlines() if "resuming at" in line]
    assert len(lines) == times and all(f"resuming at {at} from {first.path}" in line for line in lines), out[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "pool"])
def test_a_job_killed_after_epoch_3_resumes_at_4_and_ends_as_an_uninterrupted_one(executor, scenarios, capfd):
    tries, (plain, plain_weights, plain_store), _ = scenarios
    first = tries[executor]
    assert not first.why, first.why
    stopped_at = int(first.state["epoch"])
    assert 3 <= stopped_at < EPOCHS and first.path.name == f"{plain.tags[schema.JOB_HASH]}.pt"
    assert ("in_epoch" in first.state) == (executor == "local")  # local: killed inside epoch 4

    capfd.readouterr()
    assert main(first.args) == 0
    out = capfd.readouterr().out
    line = resumed_line(out, first)

    store, runs = finished(first.uri)
    resumed = [r for r in runs if r.tags[schema.JOB_HASH] == plain.tags[schema.JOB_HASH]]
    assert len(resumed) == 1
    (run,) = resumed
    assert line.endswith(f"in run {run.run_id}")
    if executor == "local":  # the job that ended before the kill is not trained again
        (other,) = [r for r in runs if r is not run]
        assert other.tags["seed"] == "1" and "[skip] erm on synth5/studio (seed 1): FINISHED already" in out
        grids = store.runs(store.experiment("tiny"), kind="grid")  # the killed invocation's, closed
        assert sorted(g.status for g in grids) == ["FINISHED", "KILLED"]
        assert [g.tags["error"] for g in grids if g.status == "KILLED"] == [ABANDONED]
    else:
        assert len(runs) == 1
    assert run.tags[schema.RESUMED_FROM].startswith(f"epoch {stopped_at} ")
    for key in ("train/loss", schema.target_metric("synth5/film", "acc")):
        steps = [step for step, _ in store.metric_history(run.run_id, key)]
        assert steps == list(range(1, EPOCHS + 1)), (key, steps)
        assert store.metric_history(run.run_id, key) == plain_store.metric_history(plain.run_id, key)
    def numbers(metrics):  # what training computed (not the clock's readings)
        return {k: v for k, v in metrics.items() if not k.startswith("system/") and "seconds" not in k}

    assert numbers(run.metrics) == numbers(plain.metrics) and len(numbers(run.metrics)) > 20
    resumed_weights = weights(store, run.run_id, first.tmp)
    assert resumed_weights.keys() == plain_weights.keys() and len(plain_weights) > 10
    for key, value in plain_weights.items():
        assert torch.equal(resumed_weights[key], value) if isinstance(value, torch.Tensor) else \
            resumed_weights[key] == value, key
    assert not first.path.exists()  # deleted when the job ended


@pytest.mark.slow
def test_a_fused_group_killed_inside_an_epoch_resumes_as_one_and_ends_as_uninterrupted(scenarios, capfd):
    tries, _, (plain_runs, plain_store, plain_tmp) = scenarios
    first = tries["fused"]
    assert not first.why, first.why
    stopped_at = int(first.state["epoch"])
    assert 3 <= stopped_at < EPOCHS and "in_epoch" in first.state  # between two batches of the next epoch

    capfd.readouterr()
    assert main(first.args) == 0
    resumed_line(capfd.readouterr().out, first, times=2)
    store, runs = finished(first.uri)
    assert len(runs) == 2
    by_seed = {r.tags["seed"]: r for r in plain_runs}
    for run in runs:
        plain = by_seed[run.tags["seed"]]
        steps = [step for step, _ in store.metric_history(run.run_id, "train/loss")]
        assert steps == list(range(1, EPOCHS + 1))
        assert store.metric_history(run.run_id, "train/loss") == plain_store.metric_history(plain.run_id, "train/loss")
        key = schema.target_metric("synth5/film", "acc")
        assert run.metrics[key] == plain.metrics[key] and run.metrics["test/mean_acc"] == plain.metrics["test/mean_acc"]
        mine, theirs = weights(store, run.run_id, first.tmp), weights(plain_store, plain.run_id, plain_tmp)
        assert all(torch.equal(mine[k], v) if isinstance(v, torch.Tensor) else mine[k] == v for k, v in theirs.items())
    assert not first.path.exists()


@pytest.mark.slow
def test_no_resume_saves_nothing_and_the_default_interval_skips_short_epochs(tmp_path, capfd):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tiny = protocol(tmp_path)
    tiny.write_text(tiny.read_text().replace(f"epochs = {EPOCHS}", "epochs = 2"))
    writes = []
    from benchmark.training import resume

    original = resume.ResumePoint.save
    resume.ResumePoint.save = lambda self, state: (writes.append(self.path), original(self, state))
    try:
        assert main(run_args(tiny, uri, "local") + ["--no-resume"]) == 0
        assert writes == [] and "[resume] off (--no-resume)" in capfd.readouterr().out
        # By default an epoch is written only a minute after the last write: these take a second.
        assert main(run_args(tiny, uri, "local")[:-2] + ["--seeds", "4"]) == 0
        assert writes == []
        store = open_store(uri)
        grids = {g.params["resume_dir"]: g for g in store.runs(store.experiment("tiny"), kind="grid")}
        assert grids.keys() == {"off", str((tmp_path / "resume").resolve())}  # beside the store by default
        assert all(g.params["resume_mid_epoch_s"] == "off" for g in grids.values())
        for bad in (["--resume-every", "-1"], ["--resume-mid-epoch", "-1"], ["--no-resume", "--resume-mid-epoch", "60"]):
            assert main(run_args(tiny, uri, "local")[:-2] + ["--seeds", "5", *bad]) == 2, bad
        assert len(store.runs(store.experiment("tiny"), kind="grid")) == 2  # refused before any run was opened
    finally:
        resume.ResumePoint.save = original


def test_a_killed_claimant_not_yet_reaped_is_dead():
    """A pool worker SIGKILLed with its parent stays a zombie where no init reaps it (containers):
    its job must still be taken over."""
    import psutil

    from benchmark.store.liveness import process_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tags = {schema.HOST: socket.gethostname(), schema.PID: str(child.pid),
            schema.PID_STARTED: f"{psutil.Process(child.pid).create_time():.3f}"}
    assert process_alive(tags) is True
    child.kill()
    deadline = time.time() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # dead, not waited for
        assert time.time() < deadline
        time.sleep(0.05)
    assert process_alive(tags) is False
    child.wait()


def test_the_checkpoints_place_follows_the_store(tmp_path, capsys):
    """Beside a store on this machine; for a tracking server, under its experiment's artifact
    location (a folder there when it is a path, else its URI); a folder or URI the user names wins."""
    from benchmark.core.paths import results_dir
    from benchmark.run.grid import resume_place
    def Server(location):  # a tracking server (never reached) whose experiments keep artifacts at `location`
        store = open_store("http://127.0.0.1:9")
        store.artifact_location = lambda experiment_id: f"{location}/{experiment_id}" if location else None
        return store

    assert resume_place(open_store(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"), "1", "local", None) == \
        str(tmp_path / "db" / "resume")
    assert resume_place(Server(f"file://{tmp_path}/art"), "7", "ray", None) == str(tmp_path / "art" / "7" / "resume")
    assert resume_place(Server(str(tmp_path / "art")), "7", "ray", None) == str(tmp_path / "art" / "7" / "resume")
    assert resume_place(Server("s3://bucket/mlruns"), "7", "ray", None) == "s3://bucket/mlruns/7/resume"
    assert resume_place(Server("mlflow-artifacts:"), "7", "pool", None) == "mlflow-artifacts:/7/resume"
    assert resume_place(Server(None), "7", "ray", None) == str((results_dir() / "resume").resolve())
    assert "--resume-dir" in capsys.readouterr().out  # said: other hosts cannot see this one's folder
    assert resume_place(Server("s3://bucket/mlruns"), "7", "ray", str(tmp_path / "shared")) == str(tmp_path / "shared")
    assert resume_place(Server(None), "7", "ray", "s3://other/ckpt") == "s3://other/ckpt"
