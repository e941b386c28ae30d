"""`benchmark adapt` end to end: a tiny grid's trained models adapted at test time without
retraining, each evaluation recorded once, the tta table and the paired comparison read back;
`benchmark evaluate --protocol` on slices of the targets and the slices, groups and corruptions
tables; a SIGKILL in the middle (of adaptations on slices) resumed to one record per hash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from benchmark.cli import main
from benchmark.store import open_store, schema

from .test_runner import write_protocol
from .test_tables import markdown_rows


def tta_runs(uri: str):
    store = open_store(uri)
    return store.runs(store.experiment("tiny"), kind=schema.TTA_KIND)


@pytest.mark.slow
def test_adapt_records_each_evaluation_once_and_the_tta_table_reads_them(tmp_path, capsys):
    protocol = write_protocol(tmp_path)
    uri = f"jsonl:{tmp_path}/runs"
    base = ["--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm,clip_probe"]
    assert main(["run", *base]) == 0
    capsys.readouterr()
    # A wrong option value stops before any work, naming the key.
    assert main(["adapt", *base, "--tta", "t3a", "--set", "tta.t3a.filter_k=0"]) == 2
    assert "tta.t3a.filter_k = 0: a positive count, or -1 for all" in capsys.readouterr().err
    adapt = ["adapt", *base, "--tta", "none,norm,t3a,eata"]
    assert main(adapt) == 0
    out = capsys.readouterr().out
    # 2 sources x 2 targets x 4 methods, for each trained method; clip_probe (a probe on cached
    # features, no network) is refused by the three that adapt, with its reason, and recorded;
    # none evaluates it with its own predict
    assert "adapt: 20 evaluation(s) run, 0 FINISHED before, 12 not applicable" in out
    assert "clip_probe on synth5/studio (seed 0) + norm: n/a (norm: method clip_probe has no trained network" in out
    runs = tta_runs(uri)
    assert len(runs) == 32 and len({r.tags[schema.TTA_HASH] for r in runs}) == 32
    jobs = {r.run_id: r for r in open_store(uri).runs(open_store(uri).experiment("tiny"), jobs_only=True)}
    for run in runs:
        job = jobs[run.tags[schema.SOURCE_RUN]]
        key = f"{schema.target_prefix(run.tags[schema.TTA_TARGET])}/acc"
        if run.tags[schema.METHOD] == "clip_probe" and run.tags[schema.TTA] != "none":
            assert not run.metrics and run.tags[schema.ERROR].startswith("not applicable: ")
            continue
        if run.tags[schema.TTA] == "none":  # the stream without adaptation is the evaluator's prediction
            assert run.metrics[key] == job.metrics[key]
            assert run.metrics[key.replace("/acc", "/ece")] == pytest.approx(job.metrics[key.replace("/acc", "/ece")],
                                                                              abs=1e-6)
        if run.tags[schema.TTA] == "eata":  # its Fisher came from synth5/studio's or film's validation split
            assert run.metrics["tta/forwards"] >= run.metrics["tta/batches"]

    assert main(adapt) == 0
    assert "adapt: 0 evaluation(s) run, 32 FINISHED before" in capsys.readouterr().out
    assert len(tta_runs(uri)) == 32
    # Another stream is another evaluation.
    assert main(["adapt", *base, "--tta", "norm", "--batch-size", "4"]) == 0
    assert "adapt: 4 evaluation(s) run" in capsys.readouterr().out

    # Temperature scaling: T from the source's validation split, the same T for every target of a
    # job; accuracy unchanged, another evaluation (its own hash).
    assert main(["adapt", *base, "--tta", "none", "--calibrate", "temperature"]) == 0
    assert "adapt: 8 evaluation(s) run" in capsys.readouterr().out
    scaled = [r for r in tta_runs(uri) if r.params.get("tta.calibrate") == "temperature" and r.metrics]
    assert len(scaled) == 8
    for run in scaled:
        job = jobs[run.tags[schema.SOURCE_RUN]]
        key = f"{schema.target_prefix(run.tags[schema.TTA_TARGET])}/acc"
        assert run.metrics[key] == job.metrics[key] and run.metrics["tta/temperature"] > 0
        same_job = [r.metrics["tta/temperature"] for r in scaled if r.tags[schema.SOURCE_RUN] == job.run_id]
        assert len(set(same_job)) == 1 and same_job[0] != 1.0

    out_file = tmp_path / "tta.md"
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", "tta", "--out", str(out_file)]) == 0
    text = out_file.read_text()
    rows = markdown_rows(text)
    # Evaluations under other settings are their own columns, never averaged with the defaults'.
    columns = ("none", "eata", "none[temperature]", "norm", "norm[batch_size=4]", "t3a")
    assert rows[0] == ["Method", *(f"{t} {k}" for t in columns for k in ("unseen", "in-domain"))]
    assert rows[2][0] == "erm" and all(c.strip("*!").replace(".", "", 1).isdigit() for c in rows[2][1:])
    assert "erm+norm − erm" in text and "Cost per test image" in text and "eata " in text
    capsys.readouterr()
    assert main(["compare", "erm+eata", "erm", "--protocol", "tiny", "--tracking-uri", uri]) == 0
    assert "erm+eata vs erm" in capsys.readouterr().out
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", "tta", "--metric", "ece"]) == 0
    assert "tiny: ece (%)" in capsys.readouterr().out
    figure = tmp_path / "reliability.png"
    assert main(["reliability", "--protocol", str(protocol), "--tracking-uri", uri, "--method", "erm", "--source",
                 "synth5/studio", "--target", "synth5/film", "--tta", "none,norm", "--out", str(figure)]) == 0
    out = capsys.readouterr().out
    assert figure.stat().st_size > 0 and figure.with_suffix(".pdf").stat().st_size > 0
    # The diagram's "none" panel is the recorded plain evaluation's ECE.
    ece = next(r for r in tta_runs(uri) if r.tags[schema.TTA] == "none" and r.tags[schema.TTA_TARGET] == "synth5/film"
               and r.tags[schema.SOURCE] == "synth5/studio").metrics["test/synth5.film/ece"]
    assert f"none: ECE {100 * ece:.2f}%" in out
    assert main(["adapt", *base, "--tta", "tent", "--set", "tta.sar.lr=1"]) == 2
    assert "--set tta.sar.lr: not an option of a TTA method named in --tta (tent)" in capsys.readouterr().err

    # Slices: every trained model on each slice of its targets, once (the TTA method none), no retraining.
    sliced = ("synth5/film:pose30,synth5/studio:skin=dark,synth5/studio:skin=medium,synth5/studio:skin=light,"
              "synth5/film:contrast@1,synth5/studio:contrast@1")
    evaluate = ["evaluate", "--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm,clip_probe",
                "--slices", sliced]
    assert main(evaluate) == 0
    assert "adapt: 24 evaluation(s) run, 0 FINISHED before" in capsys.readouterr().out
    assert main(evaluate) == 0
    assert "adapt: 0 evaluation(s) run, 24 FINISHED before" in capsys.readouterr().out
    for name, header in (("slices", ["Method", "synth5/film:pose30", "Δ synth5/film:pose30"]),
                         ("groups", ["Method", "dark", "medium", "light", "worst", "gap"]),
                         ("corruptions", ["Method", "contrast", "mean (mCA)", "mCE vs erm"])):
        assert main(["table", "--protocol", "tiny", "--tracking-uri", uri, "--table", name, "--baseline", "erm",
                     "--out", str(tmp_path / f"{name}.md")]) == 0
        rows = markdown_rows((tmp_path / f"{name}.md").read_text())
        assert rows[0] == header and rows[2][0] == "erm", rows
        assert all(c.replace(".", "", 1).lstrip("-").isdigit() for c in rows[2][1:]), rows
    assert rows[2][3] == "100.00"  # erm's mCE relative to itself
    # compare on the slices, and on each attribute's worst group (the unit still the trained model)
    assert main(["compare", "erm", "clip_probe", "--protocol", "tiny", "--tracking-uri", uri, "--slices"]) == 0
    out = capsys.readouterr().out
    assert "synth5/film:pose30" in out and "synth5/studio:contrast@1" in out and "in-domain" in out
    assert main(["compare", "erm", "clip_probe", "--protocol", "tiny", "--tracking-uri", uri, "--worst-group"]) == 0
    out = capsys.readouterr().out
    assert "synth5/studio:skin=worst" in out and "synth5/film:pose30" not in out


@pytest.mark.slow
def test_adapt_killed_mid_target_resumes_to_one_record_per_hash(tmp_path, capsys):
    """In an MLflow store (each evaluation linked to its trained model): SIGKILL once the first
    evaluations are written; the next invocation does the rest, and every hash has one FINISHED run."""
    protocol = write_protocol(tmp_path)
    uri = f"sqlite:///{tmp_path}/store.db"
    base = ["--protocol", str(protocol), "--tracking-uri", uri, "--methods", "erm"]
    assert main(["run", *base]) == 0
    adapt = [sys.executable, "-m", "benchmark", "adapt", *base, "--tta", "none,tent,sar,shot_im,lame",
             "--batch-size", "4", "--slices", "synth5/film:pose30,synth5/studio:contrast@1"]
    proc = subprocess.Popen(adapt, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not [r for r in tta_runs(uri) if r.status == "FINISHED"]:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [r for r in tta_runs(uri) if r.status == "FINISHED"]
    assert 1 <= len(before) < 20, len(before)
    done = subprocess.run(adapt, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{20 - len(before)} evaluation(s) run, {len(before)} FINISHED before" in done.stdout
    finished = [r for r in tta_runs(uri) if r.status == "FINISHED"]
    hashes = [r.tags[schema.TTA_HASH] for r in finished]
    assert len(hashes) == 20 and len(set(hashes)) == 20
    store = open_store(uri)
    model = store.model_of_run(finished[0].tags[schema.SOURCE_RUN])
    assert model is not None and all(r.tags.get(schema.SOURCE_MODEL) for r in finished)
    # The model's page lists the adapted results: metrics of its TTA runs, linked to the target's dataset.
    import mlflow

    linked = mlflow.MlflowClient(uri).get_logged_model(model.model_id).metrics
    adapted = {r.run_id for r in finished if r.tags[schema.SOURCE_MODEL] == model.model_id}
    from_tta = [m for m in linked if m.run_id in adapted and m.key.startswith("test/")]
    assert from_tta and all(m.dataset_name and m.dataset_name.endswith(":test") for m in from_tta)
    # ... the slices' own datasets (the run was on slices of the targets)
    assert {m.dataset_name for m in from_tta} == {"synth5/film:pose30:test", "synth5/studio:contrast@1:test"}
