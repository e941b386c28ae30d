"""The result store on both backends (MLflow on SQLite, JSON lines): job states, claims,
abandoned runs, and the results frame tables are built from."""

from __future__ import annotations

import json

import os
import time

import pandas as pd
import pytest

from benchmark.core.errors import BenchmarkError
from benchmark.store import ABANDONED, open_store, schema

from .test_tables import FakeJob, fill_store, paper_results

BACKENDS = ["sqlite:///{tmp}/mlflow.db", "jsonl:{tmp}/runs"]


@pytest.fixture(params=BACKENDS, ids=["mlflow", "jsonl"])
def store(request, tmp_path):
    return open_store(request.param.format(tmp=tmp_path))


def job(name: str) -> FakeJob:
    return FakeJob("p", "erm", name, 0, "resnet18:none")


def test_job_states_follow_the_runs_of_each_hash(store):
    exp = store.experiment("p")
    jobs = [job(s) for s in ("new", "done", "failed", "running", "dead")]
    store.open_job(exp, "g", jobs[1]).finish("FINISHED")
    store.open_job(exp, "g", jobs[2]).finish("FAILED")
    store.open_job(exp, "g", jobs[3])  # RUNNING, owned by this live process
    dead = store.create_run(exp, "dead", {schema.JOB_HASH: jobs[4].hash, schema.HOST: os.uname().nodename,
                                          schema.PID: "999999999", schema.PID_STARTED: "0"})
    states = {s.job.source: s.state for s in store.job_states(jobs, exp)}
    assert states == {"new": "new", "done": "FINISHED", "failed": "FAILED", "running": "RUNNING", "dead": "abandoned"}
    (abandoned,) = [s for s in store.job_states(jobs, exp) if s.state == "abandoned"]
    store.mark_abandoned(abandoned, exp)
    (run,) = store.runs(exp, job_hash=jobs[4].hash)
    assert run.run_id == dead.run_id and run.status == "FAILED" and run.tags[schema.ERROR] == ABANDONED


def test_the_earliest_live_claim_holds_a_job_and_a_finished_run_ends_it(store):
    exp = store.experiment("p")
    first = store.open_job(exp, "g", job("a"))
    time.sleep(0.01)  # a later start time (runs stamped in the same millisecond are ordered by run id)
    second = store.open_job(exp, "g", job("a"))
    assert store.claim(exp, job("a").hash, first.run_id, settle_s=0) is None
    holder = store.claim(exp, job("a").hash, second.run_id, settle_s=0)
    assert holder.startswith(f"running in process {os.getpid()}") and first.run_id in holder
    store.delete_run(second.run_id)
    assert [r.run_id for r in store.runs(exp, job_hash=job("a").hash)] == [first.run_id]
    first.finish("FINISHED")
    third = store.open_job(exp, "g", job("a"))
    assert store.claim(exp, job("a").hash, third.run_id, settle_s=0) == f"FINISHED already (run {first.run_id})"


def test_grids_left_running_by_a_dead_process_are_closed_as_killed(store):
    exp = store.experiment("p")
    live = store.open_grid(exp, "p", "benchmark run")
    dead = store.create_run(exp, "grid-old", {schema.KIND: "grid", schema.HOST: os.uname().nodename,
                                              schema.PID: "999999999", schema.PID_STARTED: "0"})
    store.close_abandoned_grids(exp)
    status = {r.run_id: r.status for r in store.runs(exp, kind="grid")}
    assert status == {live.run_id: "RUNNING", dead.run_id: "KILLED"}


def test_results_count_one_finished_run_per_job_and_name_the_datasets(store):
    exp = store.experiment("p")
    for acc in (0.5, 0.9):  # two FINISHED runs of one hash: the earlier counts
        log = store.open_job(exp, "g", job("synth5/studio"))
        log.metrics({schema.target_metric("synth5/film", "acc"): acc, schema.MEAN_ACC: acc})
        log.params({schema.data_param("synth5/film", "test"): "fingerprint"})
        log.finish("FINISHED")
    failed = store.open_job(exp, "g", job("synth5/film"))
    failed.metrics({schema.target_metric("synth5/film", "acc"): 0.1})
    failed.finish("FAILED")
    frame = store.results("p")  # the target's name comes back from the run's data.* params
    assert frame[["source", "target", "metric", "value"]].values.tolist() == [["synth5/studio", "synth5/film", "acc", 0.5]]
    (warning,) = frame.attrs["warnings"]
    assert "1 extra FINISHED run(s) of 1 job(s) ignored" in warning
    assert store.results("absent").empty and store.latest_protocol() == "p"


def test_results_read_back_equal_the_frame_tables_are_tested_on(store):
    fill_store(store)
    for protocol in ("gfer5", "gfer5_clip"):
        pd.testing.assert_frame_equal(store.results(protocol, ["rafdb", "ferplus", "affectnet", "sfew", "mma"]),
                                      paper_results(protocol))


def test_a_broken_jsonl_line_is_named_with_file_and_line(tmp_path):
    store = open_store(f"jsonl:{tmp_path / 'runs'}")
    store.experiment("p")
    with open(tmp_path / "runs" / "runs.jsonl", "a") as fh:
        fh.write('{"op": "create", "run": \n')
    with pytest.raises(BenchmarkError, match=r"runs\.jsonl:2: not a JSON event"):
        store.experiment_names()


def test_an_mlflow_experiment_opens_on_its_training_runs(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = store.experiment("p")
    tags = store.experiment_tags(exp)
    assert tags[schema.EXPERIMENT_KIND] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.jobs"])  # what ?viewStateShareKey=jobs shows
    assert "metrics.`test/mean_unseen_acc`" in view["selectedColumns"] and "params.`method`" in view["selectedColumns"]


def test_a_job_made_again_on_other_data_counts_once_with_a_warning(store):
    """The same job (method, backbone, source, seed, settings) FINISHED on two versions of its
    data has two job hashes; a table must count one seed once, the latest, and say why."""
    exp = store.experiment("p")
    for digest, acc in (("old-pixels", 0.5), ("new-pixels", 0.7)):
        fake = job("synth5/studio")
        fake.hash = f"{fake.hash}-{digest}"  # the data fingerprint enters a real job's hash
        log = store.open_job(exp, "g", fake)
        log.params({schema.BACKBONE: "resnet18:none", "hp.lr": "0.001",
                    schema.data_param("synth5/webcam", "test"): digest,
                    schema.data_param("synth5/studio", "test"): "same"})
        log.metrics({schema.target_metric("synth5/webcam", "acc"): acc})
        log.finish("FINISHED")
        time.sleep(0.01)
    other = job("synth5/studio")  # other hyperparameters: another job, counted as today
    other.hash += "-other-hp"
    log = store.open_job(exp, "g", other)
    log.params({schema.BACKBONE: "resnet18:none", "hp.lr": "0.01", schema.data_param("synth5/webcam", "test"): "old-pixels"})
    log.metrics({schema.target_metric("synth5/webcam", "acc"): 0.1})
    log.finish("FINISHED")
    frame = store.results("p")
    assert sorted(frame["value"]) == [0.1, 0.7]
    (warning,) = frame.attrs["warnings"]
    assert warning.startswith("1 job(s) were run on different data (erm on synth5/studio (seed 0): "
                              "synth5/webcam:test old-pixels vs new-pixels)")
    assert "1 earlier run(s) ignored" in warning
    history = store.history("p", ["acc"])
    assert sorted(history["value"]) == [0.1, 0.7]


def test_a_tag_another_process_set_at_the_same_moment_is_not_an_error(tmp_path, monkeypatch):
    """Two grids opening one new experiment on a tracking server: the later write of the same
    experiment tag fails on the server's UNIQUE constraint, after the earlier one set it."""
    store = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    client = store.client
    real = client.set_experiment_tag
    raced: list[str] = []

    def set_then_fail(experiment_id, key, value):
        real(experiment_id, key, value)  # the other process's write
        raced.append(key)
        raise RuntimeError("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: experiment_tags.key")

    monkeypatch.setattr(client, "set_experiment_tag", set_then_fail)
    experiment = store.experiment("p")
    assert len(raced) == 2 and store.experiment_tags(experiment)[schema.EXPERIMENT_KIND] == schema.TRAINING_RUNS

    def fail(experiment_id, key, value):
        raise RuntimeError("BAD_REQUEST: something else")

    monkeypatch.setattr(client, "set_experiment_tag", fail)
    with pytest.raises(RuntimeError, match="something else"):
        store._set_experiment_tag(experiment, "other.key", "v")
