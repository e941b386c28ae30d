"""Resume on the executors, end to end: a grid's job killed with SIGKILL after its third of six
epochs (a power cut: no handler runs) is run again by the same command; the new try goes on from
the epoch checkpoint beside the store, says so in one line, and ends bit for bit where an
uninterrupted run of the job ends (same machine, same threads), with one FINISHED run whose
history has every epoch once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.store import open_store, schema

from .test_runner import TINY

EPOCHS = 6


def protocol(tmp: Path) -> Path:
    path = tmp / "tiny.toml"
    path.write_text(TINY.format(epochs=EPOCHS, extra_datasets="", extra_sources=""))
    return path


def run_args(protocol_file: Path, uri: str, executor: str) -> list[str]:
    return ["run", "--protocol", str(protocol_file), "--tracking-uri", uri, "--methods", "erm", "--sources",
            "synth5/studio", "--threads", "1", "--executor", executor, *(["--workers", "1"] if executor == "pool" else []),
            "--resume-every", "0"]  # epochs of a second: saved all the same


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


def saved_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    uri = f"sqlite:///{tmp / 'store.db'}"
    assert main(run_args(protocol(tmp), uri, "local")) == 0
    store, (run,) = finished(uri)
    return run, weights(store, run.run_id, tmp), store


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "pool"])
def test_a_job_killed_after_epoch_3_resumes_at_4_and_ends_as_an_uninterrupted_one(executor, uninterrupted, tmp_path,
                                                                                   capfd):
    plain, plain_weights, plain_store = uninterrupted
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    args = run_args(protocol(tmp_path), uri, executor)
    checkpoint = tmp_path / "resume" / f"{plain.tags[schema.JOB_HASH]}.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    first = subprocess.Popen([sys.executable, "-m", "benchmark", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while saved_epoch(checkpoint) < 3:
            assert first.poll() is None and time.time() < deadline, "the job ended or stalled before epoch 3"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run and, for the pool, its worker
        first.wait()
    stopped_at = saved_epoch(checkpoint)
    assert 3 <= stopped_at < EPOCHS

    capfd.readouterr()
    assert main(args) == 0
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if "resuming at epoch" in line]
    assert len(lines) == 1 and f"resuming at epoch {stopped_at + 1} from {checkpoint}" in lines[0], out[-3000:]

    store, runs = finished(uri)
    assert len(runs) == 1
    (run,) = runs
    assert lines[0].endswith(f"in run {run.run_id}")
    assert run.tags[schema.RESUMED_FROM].startswith(f"epoch {stopped_at} of run ")
    for key in ("train/loss", schema.target_metric("synth5/film", "acc")):
        steps = [step for step, _ in store.metric_history(run.run_id, key)]
        assert steps == list(range(1, EPOCHS + 1)), (key, steps)
        assert store.metric_history(run.run_id, key) == plain_store.metric_history(plain.run_id, key)
    def numbers(metrics):  # what training computed (not the clock's readings)
        return {k: v for k, v in metrics.items() if not k.startswith("system/") and "seconds" not in k}

    assert numbers(run.metrics) == numbers(plain.metrics) and len(numbers(run.metrics)) > 20
    resumed_weights = weights(store, run.run_id, tmp_path)
    assert resumed_weights.keys() == plain_weights.keys() and len(plain_weights) > 10
    for key, value in plain_weights.items():
        assert torch.equal(resumed_weights[key], value) if isinstance(value, torch.Tensor) else \
            resumed_weights[key] == value, key
    assert not checkpoint.exists()  # deleted when the job ended


def fused_args(protocol_file: Path, uri: str) -> list[str]:
    return ["run", "--protocol", str(protocol_file), "--tracking-uri", uri, "--methods", "erm", "--sources",
            "synth5/studio", "--seeds", "0,1", "--threads", "1", "--fuse", "2", "--resume-every", "0"]


@pytest.mark.slow
def test_a_fused_group_killed_after_epoch_3_resumes_as_one_and_ends_as_uninterrupted(tmp_path, capfd):
    plain_uri = f"sqlite:///{tmp_path / 'plain' / 'store.db'}"
    (tmp_path / "plain").mkdir()
    assert main(fused_args(protocol(tmp_path / "plain"), plain_uri)) == 0
    plain_store, plain_runs = finished(plain_uri)
    assert len(plain_runs) == 2 and all(r.params[schema.FUSED] == "2" for r in plain_runs)

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    args = fused_args(protocol(tmp_path), uri)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    first = subprocess.Popen([sys.executable, "-m", "benchmark", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (found := list((tmp_path / "resume").glob("fused-*.pt"))) or saved_epoch(found[0]) < 3:
            assert first.poll() is None and time.time() < deadline, "the group ended or stalled before epoch 3"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    stopped_at = saved_epoch(found[0])
    assert 3 <= stopped_at < EPOCHS

    capfd.readouterr()
    assert main(args) == 0
    out = capfd.readouterr().out
    assert out.count(f"resuming at epoch {stopped_at + 1} from {found[0]}") == 2, out[-3000:]
    store, runs = finished(uri)
    assert len(runs) == 2
    by_seed = {r.tags["seed"]: r for r in plain_runs}
    for run in runs:
        plain = by_seed[run.tags["seed"]]
        steps = [step for step, _ in store.metric_history(run.run_id, "train/loss")]
        assert steps == list(range(1, EPOCHS + 1))
        assert store.metric_history(run.run_id, "train/loss") == plain_store.metric_history(plain.run_id, "train/loss")
        key = schema.target_metric("synth5/film", "acc")
        assert run.metrics[key] == plain.metrics[key] and run.metrics["test/mean_acc"] == plain.metrics["test/mean_acc"]
        mine, theirs = weights(store, run.run_id, tmp_path), weights(plain_store, plain.run_id, tmp_path / "plain")
        assert all(torch.equal(mine[k], v) if isinstance(v, torch.Tensor) else mine[k] == v for k, v in theirs.items())
    assert not list((tmp_path / "resume").glob("fused-*.pt"))


@pytest.mark.slow
def test_no_resume_saves_nothing_and_the_default_interval_skips_short_epochs(tmp_path, capfd):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tiny = protocol(tmp_path)
    tiny.write_text(tiny.read_text().replace(f"epochs = {EPOCHS}", "epochs = 2"))
    saved = []
    from benchmark.training import resume

    original = resume.EpochCheckpoint.save
    resume.EpochCheckpoint.save = lambda self, state: (saved.append(self.path), original(self, state))
    try:
        assert main(run_args(tiny, uri, "local") + ["--no-resume"]) == 0
        assert saved == [] and "[resume] off (--no-resume)" in capfd.readouterr().out
        store = open_store(uri)
        (grid,) = store.runs(store.experiment("tiny"), kind="grid")
        assert grid.params["resume_dir"] == "off"
        assert main(run_args(tiny, uri, "local") + ["--seeds", "3"]) == 0
        assert len(saved) == 1 and saved[0].parent == (tmp_path / "resume").resolve()
        # By default an epoch is written only a minute after the last write: these take a second.
        assert main(run_args(tiny, uri, "local")[:-2] + ["--seeds", "4"]) == 0
        assert len(saved) == 1
        assert main(run_args(tiny, uri, "local")[:-2] + ["--seeds", "5", "--resume-every", "-1"]) == 2
    finally:
        resume.EpochCheckpoint.save = original


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
