"""Resume with a tracking server for the store: the jobs' checkpoints go to the experiment's
artifact location (here the server's proxied `mlflow-artifacts:/`, as s3:// would be), which
every worker that logs to the server can reach, without a shared file system.

Nothing can be renamed there, so each write is a new file and the older one is deleted once the
new one is up: a stop mid-upload leaves the previous state."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from benchmark.cli import main
from benchmark.core.paths import results_dir
from benchmark.store import open_store, schema
from benchmark.store.remote_folder import RemoteFolder
from benchmark.training.resume import ResumePoint

from .test_resume_grid import FirstTry, run_args, watch
from .test_runner import free_port, mlflow_server, stop_server, wait_until_healthy, write_protocol

pytestmark = pytest.mark.slow
EPOCHS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An MLflow server that serves artifacts itself (stored under `proxied/`): its experiments'
    artifact location is mlflow-artifacts:/<id>."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    proc = mlflow_server(port, root, "--artifacts-destination", str(root / "proxied"))
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(uri, proc, "mlflow server")
        yield uri, root / "proxied"
    finally:
        stop_server(proc)


def test_writes_replace_each_other_and_a_bad_newest_falls_back_to_the_one_before(server, tmp_path):
    uri, proxied = server
    store = open_store(uri)
    location = store.artifact_location(store.experiment("remote-unit"))
    assert location.startswith("mlflow-artifacts:/")
    remote = RemoteFolder(f"{location}/resume", uri)
    first = ResumePoint.open(tmp_path / "a", "job", "run-1", remote=remote)
    first.save({"epoch": 1, "weights": torch.arange(5.0)})
    first.save({"epoch": 2, "weights": torch.arange(5.0) * 2})
    assert remote.names("job") == ["job/00000002.pt"]  # the first deleted once the second was up
    assert first.where == f"{location}/resume/job/00000002.pt"

    # A newer file that cannot be read (an upload cut short): set aside here, deleted there.
    bad = tmp_path / "upload" / "00000003.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"cut short")
    remote.put(bad, "job")
    again = ResumePoint.open(tmp_path / "b", "job", "run-2", remote=remote)
    assert again.epoch == 2 and torch.equal(again.state["weights"], torch.arange(5.0) * 2)
    assert again.warning.startswith(f"{location}/resume/job/00000003.pt: unreadable")
    assert again.warning.endswith(f"resuming from {location}/resume/job/00000002.pt")
    (aside,) = (tmp_path / "b" / "job").glob("00000003.pt.set-aside-*")
    assert aside.read_bytes() == b"cut short"  # kept for a look
    assert remote.names("job") == ["job/00000002.pt"]
    again.save({"epoch": 3})
    assert remote.names("job") == ["job/00000003.pt"]
    again.clear()
    assert remote.names("job") == []


def test_a_job_killed_on_a_tracking_server_resumes_from_its_artifact_location(server, tmp_path, capfd):
    uri, proxied = server
    protocol = write_protocol(tmp_path, epochs=EPOCHS)
    # The store's own experiment: its id names the artifact folder the checkpoints appear in.
    store = open_store(uri)
    location = store.artifact_location(store.experiment("tiny"))
    folder = proxied / location.removeprefix("mlflow-artifacts:/") / "resume"
    first = FirstTry(tmp_path, uri, run_args(protocol, uri, "local"), "*/*.pt", lambda path, state: state["epoch"] >= 2,
                     folder=folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    first.process = subprocess.Popen([sys.executable, "-m", "benchmark", *first.args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    watcher = threading.Thread(target=watch, args=([first],))
    watcher.start()
    watcher.join()
    assert not first.why, first.why
    stopped_at = int(first.state["epoch"])
    assert 2 <= stopped_at < EPOCHS

    capfd.readouterr()
    assert main(first.args) == 0
    out = capfd.readouterr().out
    name = f"{first.path.parent.name}/{first.path.name}"
    assert f"resuming at epoch {stopped_at + 1} from {location}/resume/{name} " in out, out[-3000:]
    runs = [r for r in store.runs(store.experiment("tiny"), jobs_only=True) if r.status == "FINISHED"]
    (run,) = runs
    assert [step for step, _ in store.metric_history(run.run_id, "train/loss")] == list(range(1, EPOCHS + 1))
    assert run.tags[schema.RESUMED_FROM].startswith(f"epoch {stopped_at} of run ")
    grids = store.runs(store.experiment("tiny"), kind="grid")
    assert {g.params["resume_dir"] for g in grids} == {f"{location}/resume"}
    assert not list(folder.rglob("*.pt"))  # deleted from the server when the job ended
    staging = results_dir() / "resume-staging" / first.path.parent.name  # this host's copies
    assert staging.is_dir() and not list(staging.glob("*.pt")), (stopped_at, list(staging.parent.rglob("*")))
