"""The grid runner end to end on tiny synth5 data: MLflow layout, dry run, resume after a kill,
failure isolation, concurrent logging, protocol validation."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.core.errors import BenchmarkError
from benchmark.jobs.protocol import ProtocolError, load_protocol
from benchmark.store import RunRecord, open_store

from .fsdata import write_image

TINY = """
name = "tiny"
version = 1
methods = ["erm", "clip_ft"]
datasets = ["synth5/studio", "synth5/film"{extra_datasets}]
sources = ["synth5/studio", "synth5/film"{extra_sources}]
seeds = [0]
encoder = "torchvision:mobilenet_v2:imagenet"

[backbone]
name = "mobilenet_v2"
weights = "imagenet"

[recipe]
epochs = {epochs}
batch_size = 16
input_size = 32
progress = false

[dataset_options."synth5/studio"]
scale = 0.03
[dataset_options."synth5/film"]
scale = 0.05
"""


def write_protocol(tmp_path: Path, epochs: int = 1, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    extra_list = f', "{extra}"' if extra else ""
    path.write_text(TINY.format(epochs=epochs, extra_datasets=extra_list, extra_sources=extra_list))
    return path


def finished_runs(uri: str) -> list[RunRecord]:
    """Every job run of the tiny protocol's experiment, whatever its status."""
    store = open_store(uri)
    return store.runs(store.experiment("tiny"), jobs_only=True)


def grid_runs(uri: str) -> list[RunRecord]:
    store = open_store(uri)
    return store.runs(store.experiment("tiny"), kind="grid")


@pytest.mark.slow
@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/store.db", "jsonl:{tmp}/runs"], ids=["mlflow", "jsonl"])
def test_tiny_grid_logs_every_metric_and_dry_run_lists_jobs(tmp_path, capsys, uri):
    protocol = write_protocol(tmp_path)
    uri = uri.format(tmp=tmp_path)
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs, 0 already FINISHED" in out and out.count(" new") == 4

    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--system-metrics-every", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "[1/4] start erm on synth5/studio (seed 0)" in out and "[4/4 done, " in out and "[1/4 done, " in out
    assert "left]" in out.split("[1/4 done, ")[1].splitlines()[0]  # an estimate while jobs remain
    assert "unseen acc (mean)" in out and "benchmark table --protocol tiny" in out
    assert "benchmark compare erm clip_ft --protocol tiny" in out
    runs = finished_runs(uri)
    assert len(runs) == 4 and {r.status for r in runs} == {"FINISHED"}
    run = next(r for r in runs if r.tags["method"] == "clip_ft" and r.tags["source"] == "synth5/studio")
    tags, metrics, params = run.tags, run.metrics, run.params
    assert tags["seed"] == "0" and tags["protocol"] == "tiny" and len(tags["job_hash"]) == 16
    assert "mlflow.parentRunId" in tags and "heartbeat" in tags  # a job run beats while it runs
    assert tags["mlflow.user"] and tags["mlflow.source.git.commit"] == params["git_commit"]
    assert "clip_ft on synth5/studio (seed 0), protocol tiny" in tags["mlflow.note.content"]
    assert (params["method"], params["source"], params["seed"]) == ("clip_ft", "synth5/studio", "0")
    assert sorted(run.inputs) == [("synth5/film:test", "test"), ("synth5/studio:test", "test"),
                                  ("synth5/studio:train", "train"), ("synth5/studio:val", "validation")]
    assert metrics["test/mean_unseen_acc"] == metrics["test/synth5.film/acc"]  # the one other target
    if uri.startswith("sqlite"):  # MLflow's system metrics, sampled while the job ran
        assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 and metrics["system/system_memory_usage_megabytes"] > 0
        # MLflow's dataset inputs carry synth5's generated-domain digest (the same on every machine).
        from mlflow import MlflowClient

        from benchmark.data.synth5 import domain_digest

        logged = {d.dataset.name: d.dataset.digest for d in MlflowClient(uri).get_run(run.run_id).inputs.dataset_inputs}
        assert logged["synth5/studio:train"] == logged["synth5/studio:test"] == domain_digest("studio", 0, 0.03)
        assert logged["synth5/film:test"] == domain_digest("film", 0, 0.05)
    (grid,) = grid_runs(uri)
    assert any(k.startswith("summary/clip_ft/") for k in grid.metrics) and "mlflow.note.content" in grid.tags
    for target in ("synth5.studio", "synth5.film"):
        for key in ("acc", "mean_class_acc", "macro_f1", "acc/happiness"):
            assert 0.0 <= metrics[f"test/{target}/{key}"] <= 1.0
    assert "train/loss" in metrics and "lr" in metrics and "source_val/acc" in metrics
    assert params["encoder"] == "torchvision:mobilenet_v2:imagenet" and params["encoder.digest"].startswith("b0353104")
    assert params["hp.lr"] == "0.0002" and params["recipe.epochs"] == "1" and "lib.torch" in params
    assert params["recipe.precision"] == "auto" and params["execution.autocast"] == "off"  # CPU: fp32
    assert params["execution.clip_dtype"] == "float32" and params["recipe.data_path"] == "cache"
    assert "data.synth5/studio:train" in params and "git_commit" in params
    artifacts = set(open_store(uri).artifact_paths(run.run_id, "evaluation/synth5.film"))
    assert {"evaluation/synth5.film/confusion.csv", "evaluation/synth5.film/predictions.csv"} <= artifacts
    assert "evaluation/confusion.png" in open_store(uri).artifact_paths(run.run_id, "evaluation")
    # The trained method: in the run's MLflow model (once), or under the run's model/ in JSON lines.
    store = open_store(uri)
    trained = store.checkpoint(run.run_id, tmp_path / "trained")
    assert (trained / "state_dict.pt").is_file() and (trained / "method.json").is_file()
    assert (store.model_of_run(run.run_id) is not None) == uri.startswith("sqlite")
    assert bool(store.artifact_paths(run.run_id, "model")) == uri.startswith("jsonl")

    # A second identical command skips every job.
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.count("[skip]") == 4 and "4 jobs, all FINISHED already or running elsewhere; nothing to run." in out
    assert len(finished_runs(uri)) == 4 and len(grid_runs(uri)) == 1  # no empty parent run for it


def test_running_job_on_another_host_is_judged_by_its_heartbeat(tmp_path, capsys):
    from benchmark.store.liveness import HEARTBEAT_STALE_S

    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["run", "--protocol", str(protocol), "--tracking-uri", uri, "--dry-run"]
    assert main(args) == 0
    hashes = [line.split()[3] for line in capsys.readouterr().out.splitlines() if line.endswith(" new")]
    store = open_store(uri)
    experiment = store.experiment("tiny")
    now = time.time()
    elsewhere = {"host": "another-node", "pid": "1", "pid_started": "0"}
    beats = {hashes[0]: now - HEARTBEAT_STALE_S - 60,  # its node died ten minutes ago
             hashes[1]: now - 5,  # still training over there
             hashes[2]: None}  # a run from before heartbeats: nothing to judge by
    for job_hash, beat in beats.items():
        tags = {"job_hash": job_hash, **elsewhere, **({"heartbeat": f"{beat:.0f}"} if beat else {})}
        store.create_run(experiment, "elsewhere", tags)  # status RUNNING
    assert main(args) == 0
    status = {line.split()[3]: line.split()[4] for line in capsys.readouterr().out.splitlines()
              if len(line.split()) == 5 and line.split()[3] in hashes}
    assert status == {hashes[0]: "abandoned", hashes[1]: "RUNNING", hashes[2]: "RUNNING", hashes[3]: "new"}


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/store.db", "jsonl:{tmp}/runs"])
def test_heartbeat_tags_the_run_with_the_time_and_stops_with_the_block(tmp_path, uri):
    store = open_store(uri.format(tmp=tmp_path))
    experiment = store.experiment("beats")
    run_id = store.create_run(experiment, "beating", {}).run_id

    def tags() -> dict[str, str]:
        return next(r for r in store.runs(experiment) if r.run_id == run_id).tags

    with store.heartbeat(run_id, every_s=0.05) as beat:
        deadline = time.time() + 30
        while "heartbeat" not in tags() and time.time() < deadline:
            time.sleep(0.05)
        assert abs(float(tags()["heartbeat"]) - time.time()) < 30
    assert not beat._thread.is_alive()


@pytest.mark.slow
def test_failing_job_is_isolated_and_exit_code_is_nonzero(tmp_path, capsys):
    broken = tmp_path / "broken"
    for cls in ("happy", "sad"):
        for i in range(3):
            write_image(broken / f"train/{cls}/{i}.png", value=30 * i)
            write_image(broken / f"test/{cls}/{i}.png", value=30 * i)
    (broken / "train/sad/1.png").write_bytes(b"corrupt")
    protocol = write_protocol(tmp_path, extra="imagefolder")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code = main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm",
                 "--dataset-path", f"imagefolder={broken}"])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED erm on imagefolder" in out and "unreadable image" in out
    runs = finished_runs(uri)
    by_source = {r.tags["source"]: r for r in runs}
    assert by_source["imagefolder"].status == "FAILED"
    assert "train/sad/1.png: unreadable image" in by_source["imagefolder"].tags["error"]
    assert by_source["synth5/studio"].status == "FINISHED"
    assert "test/imagefolder/acc" in by_source["synth5/studio"].metrics


def fresh_process_context():
    """Processes that share nothing with this one (no open store, no MLflow client cache), as
    "spawn" gives, but forked from a server that has imported this module already: a spawned
    process spends ~3 s importing torch, MLflow and the project before it does anything."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # read when the server starts (once per session)
    return ctx


def _log_many(uri: str, run_id: str, worker: int) -> None:
    log = open_store(uri).run_log(run_id)
    for step in range(25):
        log.metrics({f"w{worker}/a": float(step), f"w{worker}/b": float(-step)}, step=step)


@pytest.mark.slow
@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/store.db", "jsonl:{tmp}/runs"])
def test_four_processes_logging_into_one_store_lose_nothing(tmp_path, uri):
    uri = uri.format(tmp=tmp_path)
    store = open_store(uri)
    exp = store.experiment("concurrency")
    run_ids = [store.create_run(exp, f"w{w}", {}).run_id for w in range(4)]
    ctx = fresh_process_context()
    procs = [ctx.Process(target=_log_many, args=(uri, run_ids[w], w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    for w, run_id in enumerate(run_ids):
        history = store.metric_history(run_id, f"w{w}/a")
        assert sorted(step for step, _ in history) == list(range(25))


def _open_new_store(uri: str, barrier) -> None:
    barrier.wait()  # all four open the store that does not exist yet at the same moment
    open_store(uri).experiment("concurrency")


@pytest.mark.slow
def test_four_processes_creating_one_new_sqlite_store_at_once_all_succeed(tmp_path):
    # Without the lock in mlflow_store.new_client, MLflow's schema migration raced here in 5 of 5 tries.
    uri = f"sqlite:///{tmp_path / 'new' / 'store.db'}"
    ctx = fresh_process_context()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_new_store, args=(uri, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]


def test_a_store_whose_lock_file_cannot_be_written_still_opens(tmp_path, monkeypatch):
    import filelock

    from benchmark.store.mlflow_store import _READY_STORES

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    open_store(uri).experiment("existing")
    _READY_STORES.discard(uri)  # as a fresh process reading someone's read-only results

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", f"{tmp_path / 'store.db.lock'}")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    assert open_store(uri).experiment("existing", create=False) is not None


def test_protocol_unknown_key_and_wrong_type_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndatasets = ["synth5/studio"]\n[recipe]\nepochz = 3\n')
    with pytest.raises(ProtocolError, match=r"bad.toml: recipe: unknown key\(s\) epochz"):
        load_protocol(str(bad))
    bad.write_text('name = "x"\ndatasets = ["synth5/studio"]\n[recipe]\nepochs = "three"\n')
    with pytest.raises(ProtocolError, match=r"recipe.epochs: expected int, got str"):
        load_protocol(str(bad))
    bad.write_text('name = "x"\ndatasets = ["synth5/studio"]\nseed = [1]\n')
    with pytest.raises(ProtocolError, match=r"unknown key\(s\) seed"):
        load_protocol(str(bad))
    with pytest.raises(BenchmarkError, match="did you mean 'rafdb'"):
        load_protocol("gfer5", {"datasets": '["raf-db"]'})


def test_overrides_and_shipped_protocols_load():
    protocol = load_protocol("gfer5", {"recipe.epochs": "2", "backbone.path": "/x/resnet18_msceleb.pth",
                                       "seeds": "[1, 2]"})
    assert protocol.recipe.epochs == 2 and protocol.backbone.path == "/x/resnet18_msceleb.pth"
    assert protocol.seeds == [1, 2]
    assert protocol.recipe_for("affectnet", 1).sampler == "balanced"
    assert protocol.recipe_for("rafdb", 1).sampler == "uniform"
    for name in ("gfer5", "gfer5_ablation", "gfer5_backbones", "gfer5_clip", "synth5"):
        assert load_protocol(name).name == name


def test_nan_loss_stops_the_job_as_failed(tmp_path, monkeypatch, capsys):
    import methods.erm as erm_module

    def nan_step(self, batch):
        loss = self.model["fc"](self.model["backbone"](batch.images)).sum() * float("nan")
        return loss, {}

    monkeypatch.setattr(erm_module.Erm, "training_step", nan_step)
    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm",
                 "--sources", "synth5/film"]) == 1
    (run,) = finished_runs(uri)
    assert run.status == "FAILED" and "TrainingDiverged" in run.tags["error"]
    assert "loss is nan at epoch 1" in run.tags["error"]


def test_ui_binds_to_localhost_unless_told_and_links_the_runs_page(monkeypatch, capsys, tmp_path):
    from .test_tables import FakeJob

    calls = []
    monkeypatch.setattr(os, "execv", lambda program, command: calls.append(command))
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    store = open_store(uri)
    experiment = store.experiment("tiny")
    store.open_job(experiment, "g", FakeJob("tiny", "erm", "a", 0, "r18")).finish("FINISHED")
    assert main(["ui", "--tracking-uri", uri]) == 0
    assert (f"MLflow UI on http://127.0.0.1:5000/#/experiments/{experiment}/runs?workflowType=machine_learning"
            f"&viewStateShareKey=jobs for {uri}") in capsys.readouterr().out
    assert main(["ui", "--tracking-uri", uri, "--host", "0.0.0.0", "--port", "6000"]) == 0
    first, second = calls
    assert first[first.index("--host") + 1] == "127.0.0.1" and uri in first
    assert second[second.index("--host") + 1] == "0.0.0.0" and second[second.index("--port") + 1] == "6000"


def test_jobs_per_gpu_packs_fractional_gpus():
    from benchmark.run.executors.ray_cluster import task_resources

    assert task_resources(8, 4) == {"num_gpus": 0.25, "num_cpus": 1}
    assert task_resources(1, 1, threads=4) == {"num_gpus": 1.0, "num_cpus": 4}
    assert task_resources(0, 4, threads=2) == {"num_cpus": 2}  # a CPU-only cluster: the job's threads
    with pytest.raises(BenchmarkError, match="--jobs-per-gpu 0"):
        task_resources(1, 0)


@pytest.mark.slow
def test_local_executor_packs_jobs_into_worker_processes_each_job_once(tmp_path, capsys):
    protocol = write_protocol(tmp_path, epochs=2)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm", "--jobs-per-gpu", "2"]
    assert main(args) == 0, capsys.readouterr().out
    runs = finished_runs(uri)
    assert len(runs) == 2 and {r.status for r in runs} == {"FINISHED"}
    assert len({r.tags["pid"] for r in runs}) == 2 and str(os.getpid()) not in {r.tags["pid"] for r in runs}
    (a, b) = sorted(runs, key=lambda r: r.start_time)
    assert b.start_time < a.end_time  # the two jobs overlapped: they ran at once
    assert main(args) == 0  # run again: both FINISHED, nothing trained twice
    assert "[skip]" in capsys.readouterr().out and len(finished_runs(uri)) == 2
    assert main(args[:-1] + ["0"]) == 2
    assert "--jobs-per-gpu 0: must be 1 or more" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_record_their_environment_and_tables_warn_when_it_is_mixed(tmp_path, capsys):
    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    base = ["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm"]
    assert main(base + ["--sources", "synth5/studio", "--threads", "1"]) == 0
    assert main(base + ["--sources", "synth5/film", "--threads", "2"]) == 0
    params = {r.tags["source"]: r.params for r in finished_runs(uri)}
    assert params["synth5/studio"]["env.threads"] == "1" and params["synth5/film"]["env.threads"] == "2"
    for key in ("env.torch", "env.cpu", "env.cpu_capability", "env.device", "env.deterministic_algorithms"):
        assert params["synth5/film"][key] == params["synth5/studio"][key] != ""
    capsys.readouterr()
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri]) == 0
    err = capsys.readouterr().err
    assert "mix 2 environments" in err
    assert "threads=1" in err and "threads=2" in err and "erm on synth5/studio (seed 0)" in err
    assert main(base + ["--threads", "0"]) == 2
    assert "--threads 0: must be 1 or more" in capsys.readouterr().err


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(port: int, root: Path, *artifacts: str) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port`, its database in `root`; artifacts under root/artifacts
    unless `artifacts` gives the options (e.g. --artifacts-destination DIR: served by it)."""
    artifacts = artifacts or ("--default-artifact-root", str(root / "artifacts"))
    return subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'server.db'}", *artifacts, "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def wait_until_healthy(url: str, proc: subprocess.Popen, what: str, path: str = "/health") -> None:
    """Poll `url` + `path` until it answers; fail if `proc` ends or 90 s pass first."""
    import urllib.request

    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}{path}", timeout=2)
            return
        except OSError:
            assert time.time() < deadline and proc.poll() is None, f"{what} did not start"
            time.sleep(0.5)


def two_invocations_at_once(protocol: Path, uri: str, tmp_path: Path) -> list[str]:
    """Start two `benchmark run`s of the same grid together; their outputs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "benchmark", "run", "--protocol", str(protocol), "--tracking-uri", uri,
               "--threads", "1"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    return outputs


def assert_each_job_trained_once(uri: str, outputs: list[str]) -> None:
    runs = finished_runs(uri)
    hashes = [r.tags["job_hash"] for r in runs]
    assert len(hashes) == 4 and len(set(hashes)) == 4  # one FINISHED run per hash, no other run left
    assert {r.status for r in runs} == {"FINISHED"}
    trainings = sum(out.count("[done]") for out in outputs)
    assert trainings == 4, "\n".join(outputs)  # no job trained twice


@pytest.mark.slow
def test_two_invocations_started_together_train_each_job_once(tmp_path):
    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    outputs = two_invocations_at_once(protocol, uri, tmp_path)
    assert_each_job_trained_once(uri, outputs)


@pytest.mark.slow
def test_two_invocations_through_an_mlflow_server_train_each_job_once(tmp_path):
    port = free_port()
    server = mlflow_server(port, tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(uri, server, "mlflow server")
        outputs = two_invocations_at_once(write_protocol(tmp_path), uri, tmp_path)
        assert_each_job_trained_once(uri, outputs)
    finally:
        stop_server(server)


@pytest.mark.parametrize("setting, message", [
    ('hparams.erm.lr="fast"', "hparams.erm: method erm: hyperparameter lr = 'fast': expected float, got str"),
    ("hparams.erm.lr=-5", "hparams.erm: method erm: hyperparameter lr = -5.0: must be > 0"),
    ("hparams.scn.beta=1.5", "hyperparameter beta = 1.5: must be in (0, 1)"),
    ("hparams.nomethod.lr=1", "hparams.nomethod: unknown method 'nomethod'"),
    ("hparams.cafee.lr=1", "did you mean 'cafe'?"),
    ("hparams.erm.lrr=1", "unknown hyperparameter(s) lrr"),
])
def test_bad_hyperparameters_stop_at_dry_run_naming_file_and_key(tmp_path, capsys, setting, message):
    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--dry-run", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert str(protocol) in err and message in err


@pytest.mark.slow
def test_ctrl_c_closes_the_job_run_as_killed_and_prints_no_traceback(tmp_path):
    protocol = write_protocol(tmp_path, epochs=200)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--protocol", str(protocol), "--tracking-uri",
                             uri, "--methods", "erm", "--sources", "synth5/film"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # As in a terminal: a suite started in the background of a shell inherits
                            # SIGINT ignored, and Python then leaves it ignored in the child too.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:  # MLflow's set-up lines come first
        seen.append(line)
        if line.startswith("[1/1] start "):
            break
    assert seen and seen[-1].startswith("[1/1] start "), "".join(seen)
    deadline = time.time() + 60
    while not any(r.params.get("env.threads") for r in finished_runs(uri)) and time.time() < deadline:
        time.sleep(0.5)  # the job has logged its params: it is training
    proc.send_signal(signal.SIGINT)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "Traceback" not in out and "interrupted" in out, out
    assert "INFO mlflow" not in out  # a new store's set-up is not announced
    (run,) = finished_runs(uri)
    assert run.status == "KILLED" and run.tags["error"] == "interrupted (Ctrl-C)"


def test_a_ctrl_c_swallowed_by_a_gc_callback_still_stops_training(monkeypatch):
    """SIGINT raised inside a garbage-collection callback is printed and dropped by Python (seen
    once in this suite: the job trained on); the handler remembers it and the loop raises it."""
    import torch

    from benchmark.core import interrupt
    from benchmark.data import DATASETS, decode_split
    from benchmark.models.specs import BackboneSpec
    from benchmark.training.method import Components, MemoryLog
    from benchmark.training.plugins import build_method
    from benchmark.training.recipe import Recipe

    data = decode_split(DATASETS.get("synth5/studio").load(None, "test", scale=0.02), 32)
    method = build_method("erm", {}, Components(BackboneSpec("mobilenet_v2", "none")))
    log = MemoryLog()
    monkeypatch.setattr(interrupt, "_pending", True)  # the handler ran; its raise went nowhere
    with pytest.raises(KeyboardInterrupt):
        method.fit(data, recipe=Recipe(epochs=2, batch_size=4, input_size=32, progress=False, prefetch=0),
                   device=torch.device("cpu"), log=log)
    assert log.history == []  # stopped within the first epoch


def test_num_seeds_derives_seeds_from_the_protocols(tmp_path, capsys):
    from benchmark.cli.run import derived_seeds

    assert derived_seeds([3407], 3) == [3407, 3408, 3409]
    assert derived_seeds([0, 5], 1) == [0] and derived_seeds([0, 5], 4) == [0, 5, 6, 7]
    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm", "--num-seeds", "3",
                 "--dry-run"]) == 0
    assert "6 jobs, 0 already FINISHED" in capsys.readouterr().out
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--num-seeds", "2", "--seeds", "1",
                 "--dry-run"]) == 2
    assert "--seeds and --num-seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_a_job_logs_its_evaluation_history_by_epoch_and_final_values_at_the_last(tmp_path):
    protocol = write_protocol(tmp_path, epochs=2)
    uri = f"jsonl:{tmp_path / 'runs'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm",
                 "--sources", "synth5/film"]) == 0
    (run,) = finished_runs(uri)
    store = open_store(uri)
    for key in ("test/synth5.film/acc", "test/synth5.studio/macro_f1", "source_val/acc", "time/eval_seconds"):
        history = store.metric_history(run.run_id, key)
        assert [step for step, _ in history] == [1, 2], key
    assert run.metrics["test/synth5.film/acc"] == store.metric_history(run.run_id, "test/synth5.film/acc")[-1][1]
    assert run.params["recipe.eval_every"] == "1"


def test_a_held_out_validation_split_is_seeded_stratified_and_in_the_hash():
    from benchmark.jobs.plan import expand, held_out, plan_from

    protocol = load_protocol("synth5")
    plan = plan_from(protocol, None, None)
    samples = plan.samples("synth5/film", "train")
    train, val = held_out(samples, 0.2, seed=3)
    again, _ = held_out(samples, 0.2, seed=3)
    other, _ = held_out(samples, 0.2, seed=4)
    assert len(val) == round(0.2 * len(samples)) and len(train) + len(val) == len(samples)
    assert set(train.ids).isdisjoint(val.ids) and train.ids == again.ids and train.ids != other.ids
    assert train.fingerprint != samples.fingerprint and val.split == "val"
    share = np.bincount(val.labels, minlength=7) / np.bincount(samples.labels, minlength=7).clip(1)
    assert np.all(np.abs(share[np.bincount(samples.labels, minlength=7) >= 10] - 0.2) < 0.1)  # stratified

    own_train, own_val = plan.source_splits("synth5/film", 0.2, 3)  # a source with a val split keeps it
    assert own_train is samples and own_val.fingerprint == plan.samples("synth5/film", "val").fingerprint
    before = {j.hash for j in expand(protocol, ["erm"], plan)}
    assert {j.hash for j in expand(load_protocol("synth5", {"recipe.val_fraction": "0.0"}), ["erm"], plan)} == before
    changed = {j.hash for j in expand(load_protocol("synth5", {"recipe.val_fraction": "0.2"}), ["erm"], plan)}
    assert changed.isdisjoint(before)  # in the recipe's identity once set


@pytest.mark.slow
def test_a_finished_job_is_evaluated_again_from_its_checkpoint_without_retraining(tmp_path, capsys):
    protocol = write_protocol(tmp_path)
    uri = f"jsonl:{tmp_path / 'runs'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "clip_ft",
                 "--sources", "synth5/studio"]) == 0
    (run,) = finished_runs(uri)
    capsys.readouterr()
    # The same test split the job was tested on: the same accuracy, to the last digit printed.
    assert main(["evaluate", "--run", run.run_id, "--dataset", "synth5/film", "--option", "scale=0.05",
                 "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    acc = next(line for line in out.splitlines() if line.startswith("| acc "))
    assert acc.split("|")[2].strip() == f"{100 * run.metrics['test/synth5.film/acc']:.2f}", out
    assert main(["evaluate", "--run", run.run_id, "--dataset", "synth5/wild", "--option", "scale=0.03",
                 "--tracking-uri", uri, "--log"]) == 0
    assert "test/synth5.wild/acc" in open_store(uri).run(run.run_id).metrics
    capsys.readouterr()
    # A slice of a dataset, its reader options given as for the dataset (they are its dataset's)
    assert main(["evaluate", "--run", run.run_id, "--dataset", "synth5/film:pose30", "--option", "scale=0.05",
                 "--tracking-uri", uri]) == 0
    assert "on synth5/film:pose30 test, " in capsys.readouterr().out
    assert main(["evaluate", "--run", "nope", "--dataset", "synth5/wild", "--tracking-uri", uri]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_a_folder_without_val_has_no_val_split_and_can_hold_one_out(tmp_path):
    from benchmark.jobs.plan import DataPlan

    root = tmp_path / "faces"
    for cls in ("happy", "sad"):
        for i in range(6):
            write_image(root / f"train/{cls}/{i}.png", value=20 * i)
    plan = DataPlan(dataset_paths={"imagefolder": str(root)})
    assert not plan.has_split("imagefolder", "val")
    train, val = plan.source_splits("imagefolder", 0.0, 0)
    assert val is None and len(train) == 12
    train, val = plan.source_splits("imagefolder", 0.25, 0)
    assert len(val) == 3 and len(train) == 9
    (root / "val" / "happy").mkdir(parents=True)
    write_image(root / "val/happy/0.png")
    assert plan.has_split("imagefolder", "val")
