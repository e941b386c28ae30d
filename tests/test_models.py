"""Trained models as MLflow models: a tiny synth5 grid's jobs each make a LoggedModel with its
per-dataset metrics linked; MLflow ranks them as the results table does; `register` picks by the
source only and is idempotent; `mlflow.pyfunc`, `benchmark predict` and `mlflow models serve`
give the same probabilities; stores written before models were get them by `--backfill`."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.core.errors import BenchmarkError
from benchmark.core.labels import CLASSES
from benchmark.deploy.classifier import NotAnImage, decode
from benchmark.deploy.logged_model import model_name
from benchmark.deploy.register import choose
from benchmark.store import ModelRecord, open_store, schema

from .test_runner import TINY, free_port, wait_until_healthy
from .test_ui_browser import stop_and_check_nothing_is_left

SOURCE = "synth5/studio"
UNSEEN = schema.target_metric("synth5/film", "acc")
SOURCE_VAL = f"{schema.SOURCE_VAL}/acc"


# -- without a grid ---------------------------------------------------------------------------------

def record(model_id: str, seed: int, source_val: float, unseen: float) -> ModelRecord:
    return ModelRecord(model_id, f"m{seed}", f"run{seed}", "READY",
                       params={"method": "erm", "source": SOURCE, "seed": str(seed)},
                       metrics={(SOURCE_VAL, "synth5/studio:val"): source_val, (UNSEEN, "synth5/film:test"): unseen})


class Watched(ModelRecord):
    """A model that remembers every metric key read from it."""
    read: list[str] = []

    def metric(self, key):
        Watched.read.append(key)
        return super().metric(key)


def test_the_rule_picks_on_source_validation_never_on_an_unseen_target():
    # Planted: seed 0 is best on the unseen target by far, seed 1 on the source's validation split.
    planted = [record("m-a", 0, source_val=0.60, unseen=0.95), record("m-b", 1, source_val=0.70, unseen=0.20)]
    (choice,) = choose(planted, "source_val")
    assert choice.best.model_id == "m-b" and [s for s, _ in choice.ranked] == [0.70, 0.60]
    watched = [Watched(**vars(m)) for m in planted]
    Watched.read.clear()
    choose(watched, "source_val")
    with pytest.raises(BenchmarkError, match="no metric test/synth5.studio/acc"):  # planted without one
        choose(watched, "source_test")
    assert Watched.read and not any(k == UNSEEN or "film" in k for k in Watched.read)


def test_ties_go_to_the_lowest_seed_and_a_missing_metric_is_named():
    tied = [record("m-z", 2, 0.5, 0.1), record("m-y", 1, 0.5, 0.9), record("m-x", 1, 0.5, 0.2)]
    assert [m.model_id for _, m in choose(tied, "source_val")[0].ranked] == ["m-x", "m-y", "m-z"]
    bare = ModelRecord("m-q", "q", "r", "READY", params={"method": "erm", "source": SOURCE, "seed": "0"})
    with pytest.raises(BenchmarkError, match=r"m-q .*no metric source_val/acc .*val_fraction.*--rule source_test"):
        choose([bare], "source_val")
    with pytest.raises(BenchmarkError, match="known rules are source_val, source_test"):
        choose(tied, "oracle")


def test_what_does_not_decode_is_named():
    with pytest.raises(NotAnImage, match=r"notes\.txt: not an image"):
        decode(b"hello, not pixels", 32, "notes.txt")
    with pytest.raises(NotAnImage, match=r"cut\.png: unreadable image"):
        decode(png(32)[:60], 32, "cut.png")
    assert decode(png(50), 32, "ok.png").shape[:2] == (32, 32)


def test_model_names_are_ones_mlflow_takes():
    assert model_name("synth5", "erm+swad", "synth5/studio", "seed0") == "synth5-erm+swad-synth5-studio-seed0"
    assert model_name("a.b:c%d'e\"f") == "a-b-c-d-e-f"


def test_the_json_lines_store_says_it_has_no_registry(tmp_path, capsys):
    uri = f"jsonl:{tmp_path / 'runs'}"
    assert main(["register", "--tracking-uri", uri, "--protocol", "tiny", "--method", "erm"]) != 0
    err = capsys.readouterr().err
    assert "JSON-lines store has no MLflow models or model registry, so it cannot register models" in err
    assert "benchmark predict --model <run id>" in err


# -- a tiny grid with a validation split, two seeds ---------------------------------------------------

def png(size: int, seed: int = 0, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """(store uri, tmp folder, protocol file): erm on two sources, two seeds, 1 epoch, 25% held out."""
    tmp = tmp_path_factory.mktemp("models")
    protocol = tmp / "tiny.toml"
    text = TINY.format(epochs=1, extra_datasets="", extra_sources="")
    protocol.write_text(text.replace("seeds = [0]", "seeds = [0, 1]").replace("progress = false",
                                                                              "progress = false\nval_fraction = 0.25"))
    uri = f"sqlite:///{tmp / 'store.db'}"
    assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm"]) == 0
    return uri, tmp, protocol


@pytest.fixture(scope="module")
def images(grid):
    """A folder of images as users have them (sizes, modes, formats), plus one corrupt file."""
    folder = grid[1] / "faces"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png(48, 1))
    (folder / "b.jpg").write_bytes(png(100, 2, fmt="JPEG"))
    (folder / "sub" / "c.png").write_bytes(png(20, 3, mode="L"))
    (folder / "sub" / "d.webp").write_bytes(png(64, 4, fmt="WEBP"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def job_runs(uri):
    store = open_store(uri)
    return store, store.runs(store.experiment("tiny"), jobs_only=True)


@pytest.mark.slow
def test_every_job_has_a_logged_model_with_metrics_linked_to_datasets(grid):
    import mlflow

    uri, tmp, _ = grid
    store, runs = job_runs(uri)
    assert len(runs) == 4
    client = mlflow.MlflowClient(uri)
    for run in runs:
        model = store.model_of_run(run.run_id)
        assert model is not None and model.status == "READY"
        assert model.params["method"] == "erm" and model.params["source"] == run.tags["source"]
        assert model.params["seed"] == run.tags["seed"] and model.params["job_hash"] == run.tags["job_hash"]
        assert model.params["protocol"] == "tiny" and model.params["backbone"] and model.params["encoder"]
        assert model.name == model_name("erm", run.tags["source"], f"seed{run.tags['seed']}")
        for target in ("synth5/studio", "synth5/film"):
            for metric in ("acc", "mean_class_acc", "macro_f1"):
                key = schema.target_metric(target, metric)
                linked = [(k, d) for k, d in model.metrics if k == key]
                assert linked == [(key, f"{target}:test")], (key, linked)
                assert model.metric(key) == pytest.approx(run.metrics[key])
        assert (SOURCE_VAL, f"{run.tags['source']}:val") in model.metrics
        # linking adds no point to the run's own history
        assert len(client.get_metric_history(run.run_id, schema.target_metric("synth5/film", "acc"))) == 1
        # the weights are stored once: in the model, not again under the run
        assert store.artifact_paths(run.run_id, "model") == []
        files = {p.relative_to(Path(model.artifact_location.removeprefix("file://"))).as_posix(): p.stat().st_size
                 for p in Path(model.artifact_location.removeprefix("file://")).rglob("*") if p.is_file()}
        assert {"MLmodel", "model_code.py", "requirements.txt", "artifacts/checkpoint/state_dict.pt",
                "artifacts/checkpoint/method.json"} <= set(files)
        overhead = sum(files.values()) - files["artifacts/checkpoint/state_dict.pt"]
        assert overhead < 64_000, files  # the model folder is the weights and a few small files


@pytest.mark.slow
def test_mlflow_ranks_models_on_one_target_as_the_table_does(grid):
    import mlflow

    uri, _, _ = grid
    store, runs = job_runs(uri)
    results = store.results("tiny")
    film = results[(results.target == "synth5/film") & (results.metric == "acc")]
    by_job = {(source, str(seed)): value for source, seed, value in zip(film.source, film.seed, film.value)}
    mlflow.set_tracking_uri(uri)
    try:
        ranked = mlflow.search_logged_models(
            experiment_ids=[store.experiment("tiny")], output_format="list",
            order_by=[{"field_name": f"metrics.{UNSEEN}", "dataset_name": "synth5/film:test", "ascending": False}])
    finally:
        mlflow.set_tracking_uri(None)
    assert len(ranked) == 4
    values = [by_job[m.params["source"], m.params["seed"]] for m in ranked]
    assert values == sorted(values, reverse=True)
    linked = [next(x.value for x in m.metrics if x.key == UNSEEN and x.dataset_name == "synth5/film:test")
              for m in ranked]
    assert linked == values


def predict_csv(capsys, uri, model, paths, out) -> tuple[pd.DataFrame, str]:
    capsys.readouterr()
    assert main(["predict", "--model", model, *map(str, paths), "--out", str(out), "--tracking-uri", uri,
                 "--progress", "on"]) == 0
    return pd.read_csv(out), capsys.readouterr().err


@pytest.mark.slow
def test_pyfunc_and_predict_agree_and_a_corrupt_file_is_skipped(grid, images, capsys):
    import mlflow

    uri, tmp, _ = grid
    store, runs = job_runs(uri)
    run = runs[0]
    model = store.model_of_run(run.run_id)
    frame, err = predict_csv(capsys, uri, model.model_id, [images], tmp / "pred.csv")
    assert f"skipped {images / 'broken.jpg'}: " in err and "4 images predicted, 1 skipped (not images)" in err
    assert "image/s" in err or "it/s" in err or "5/5" in err  # the progress bar
    assert [Path(p).name for p in frame.path] == ["a.png", "b.jpg", "c.png", "d.webp"]
    probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-6) and list(frame["class"]) == [CLASSES[k] for k in probs.argmax(1)]

    mlflow.set_tracking_uri(uri)
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    assert [c.name for c in loaded.metadata.get_output_schema().inputs] == list(CLASSES)
    out = loaded.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in frame.path]}))
    assert list(out.columns) == list(CLASSES)
    assert np.abs(out.to_numpy() - probs).max() < 1e-6
    # the same model by run id gives the same numbers (`benchmark predict --model <run id>`)
    again, _ = predict_csv(capsys, uri, run.run_id, [images / "a.png"], tmp / "pred_run.csv")
    assert np.abs(again[[f"p_{c}" for c in CLASSES]].to_numpy()[0] - probs[0]).max() < 1e-6


@pytest.mark.slow
def test_register_is_idempotent_and_serve_answers_as_predict_does(grid, images, capsys):
    uri, tmp, _ = grid
    args = ["register", "--protocol", "tiny", "--method", "erm", "--tracking-uri", uri]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("registered now") == 2 and "alias @best" in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.count("already registered") == 2 and "registered now" not in second
    assert [l.split(":")[1] for l in first.splitlines() if "version" in l] == \
           [l.split(":")[1].replace("already registered", "registered now") for l in second.splitlines() if "version" in l]

    store, runs = job_runs(uri)
    name = model_name("tiny", "erm", SOURCE)
    picked = store.resolve_model(f"models:/{name}@best")
    studio = [store.model_of_run(r.run_id) for r in runs if r.tags["source"] == SOURCE]
    best = max(studio, key=lambda m: (m.metric(SOURCE_VAL), -int(m.params["seed"])))
    assert picked.model_id == best.model_id and picked.version == "1"
    assert json.loads(picked.tags["mlflow.modelVersions"]) == [{"name": name, "version": "1"}]  # the UI's column
    import mlflow

    version = mlflow.MlflowClient(uri).get_model_version(name, "1")
    assert "source_val" in version.description and "no unseen target read" in version.description

    frame, _ = predict_csv(capsys, uri, f"models:/{name}@best", [images], tmp / "pred_best.csv")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # uvicorn, as installed
    serve = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                              f"models:/{name}@best", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", serve, "mlflow models serve", path="/ping")
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(Path(p).read_bytes()).decode()] for p in frame.path]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
        served = pd.DataFrame(answer["predictions"])[list(CLASSES)].to_numpy()
        assert np.abs(served - frame[[f"p_{c}" for c in CLASSES]].to_numpy()).max() < 1e-6
        stop_and_check_nothing_is_left(serve, port, group=True, path="/ping")
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)


@pytest.mark.slow
def test_register_never_reads_the_unseen_target(grid, tmp_path, capsys):
    """On a copy of the store, the model the rule passes over is made the best on the unseen
    target by far; the registered model stays the one best on source validation."""
    import mlflow
    from mlflow.entities import Metric

    uri, tmp, _ = grid
    copy = tmp_path / "store.db"
    shutil.copyfile(tmp / "store.db", copy)
    uri = f"sqlite:///{copy}"
    store, runs = job_runs(uri)
    studio = sorted((store.model_of_run(r.run_id) for r in runs if r.tags["source"] == SOURCE),
                    key=lambda m: (m.metric(SOURCE_VAL), -int(m.params["seed"])))
    loser, winner = studio
    client = mlflow.MlflowClient(uri)
    linked = next(m for m in client.get_logged_model(loser.model_id).metrics if m.key == UNSEEN)
    client.log_batch(loser.run_id, metrics=[Metric(UNSEEN, 1.0, int(time.time() * 1000), 99, model_id=loser.model_id,
                                                   dataset_name=linked.dataset_name,
                                                   dataset_digest=linked.dataset_digest)])
    assert store.resolve_model(loser.model_id).metric(UNSEEN) == 1.0
    assert main(["register", "--protocol", "tiny", "--method", "erm", "--source", SOURCE, "--alias", "planted",
                 "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert store.resolve_model(f"models:/{model_name('tiny', 'erm', SOURCE)}@planted").model_id == winner.model_id


@pytest.mark.slow
def test_a_store_from_before_models_is_backfilled_and_still_evaluates(tmp_path, monkeypatch, capsys):
    from benchmark.store.mlflow_store import MlflowStore

    protocol = tmp_path / "tiny.toml"
    protocol.write_text(TINY.format(epochs=1, extra_datasets="", extra_sources=""))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with monkeypatch.context() as m:  # the harness as it was: the checkpoint as the run's model/
        m.setattr(MlflowStore, "has_models", False)
        assert main(["run", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm",
                     "--sources", SOURCE]) == 0
    store, runs = job_runs(uri)
    (run,) = runs
    assert store.model_of_run(run.run_id) is None and "model/state_dict.pt" in store.artifact_paths(run.run_id, "model")
    capsys.readouterr()
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "t.md")]) == 0
    evaluate = ["evaluate", "--run", run.run_id, "--dataset", "synth5/film", "--option", "scale=0.05",
                "--tracking-uri", uri]
    capsys.readouterr()
    assert main(evaluate) == 0
    before = capsys.readouterr().out

    assert main(["register", "--backfill", "--protocol", "tiny", "--tracking-uri", uri]) == 0
    assert "1 models logged for FINISHED job runs of tiny that had none; 0 had one already" in capsys.readouterr().out
    model = store.model_of_run(run.run_id)
    assert model is not None and model.metric(schema.target_metric("synth5/film", "acc")) == \
        pytest.approx(run.metrics[schema.target_metric("synth5/film", "acc")])
    assert main(["register", "--backfill", "--protocol", "tiny", "--tracking-uri", uri]) == 0
    assert "0 models logged" in capsys.readouterr().out and len(store.models(store.experiment("tiny"))) == 1
    assert main(evaluate) == 0  # now from the model's checkpoint: the same numbers
    assert capsys.readouterr().out == before


def test_a_missing_or_different_frozen_encoder_is_named_with_its_digest(tmp_path):
    from benchmark.deploy.classifier import ENCODER_FILE, encoder_spec

    absent = {"encoder": {"id": "openclip:ViT-B-32:openai", "path": None}, "encoder_digest": "abc123"}
    with pytest.raises(BenchmarkError, match=r"needs the frozen encoder openclip:ViT-B-32:openai \(digest abc123\), "
                                             r"not bundled with it and not found here"):
        encoder_spec(tmp_path, absent)
    other = {"encoder": {"id": "torchvision:mobilenet_v2:imagenet", "path": None}, "encoder_digest": "0" * 64}
    with pytest.raises(BenchmarkError, match=r"encoder torchvision:mobilenet_v2:imagenet has digest \w+, the model "
                                             r"was trained with 0{64}"):
        encoder_spec(tmp_path, other)
    (tmp_path / ENCODER_FILE).write_bytes(b"weights")  # a model exported with --bundle-encoder
    assert encoder_spec(tmp_path, absent).path == str(tmp_path / ENCODER_FILE)


@pytest.mark.slow
def test_an_exported_model_loads_alone_and_bundling_needs_an_encoder(grid, images, tmp_path, capsys):
    import mlflow

    uri, tmp, _ = grid
    store, runs = job_runs(uri)
    model = store.model_of_run(runs[0].run_id)
    frame, _ = predict_csv(capsys, uri, model.model_id, [images], tmp_path / "pred.csv")
    assert main(["export", "--model", model.model_id, "--out", str(tmp_path / "exported"), "--tracking-uri", uri]) == 0
    assert "mlflow models serve -m" in capsys.readouterr().out
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "exported"))
    out = loaded.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in frame.path]}))
    assert np.abs(out.to_numpy() - frame[[f"p_{c}" for c in CLASSES]].to_numpy()).max() < 1e-6
    requirements = (tmp_path / "exported" / "requirements.txt").read_text()
    assert "fer-benchmark==" in requirements and "torch==2.14.1" in requirements
    assert main(["export", "--model", model.model_id, "--out", str(tmp_path / "exported"), "--tracking-uri", uri]) == 2
    assert "exists; export writes a new folder" in capsys.readouterr().err
    assert main(["export", "--model", model.model_id, "--out", str(tmp_path / "bundled"), "--bundle-encoder",
                 "--tracking-uri", uri]) == 2  # erm trains its own backbone: no frozen encoder
    assert "--bundle-encoder: the model (erm) has no frozen encoder weights to bundle" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "pred.csv"]  # nothing staged beside them
