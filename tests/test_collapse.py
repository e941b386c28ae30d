"""A collapsed model (one that predicts almost one class) is flagged: the rule, and a deliberately
broken job through `benchmark run` and `table`."""

from __future__ import annotations

import numpy as np

from benchmark.core.labels import CLASSES
from benchmark.training.metrics import collapse

from .test_runner import finished_runs, write_protocol


def test_the_rule_flags_one_class_and_majority_level_accuracy_only():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    assert f"100% of its predictions are {CLASSES[0]!r}" in collapse(labels, np.zeros(100, dtype=int))
    mostly = np.where(np.arange(100) < 91, 3, 1)  # 91% one class: flagged even if that class is rare
    assert "91% of its predictions" in collapse(labels, mostly)
    # 60% accuracy with a 50% majority class: 10 points above it, and no class over 90%: fine.
    fine = labels.copy()
    fine[50:90] = 0
    assert collapse(labels, fine) is None
    # 51% accuracy, 50% majority: within 2 points of always answering the majority class.
    near = np.where(np.arange(100) < 50, 0, np.where(np.arange(100) < 51, 1, 4))
    assert "within 2 points of always predicting the majority class (50.00)" in collapse(labels, near)
    assert collapse(np.array([], dtype=int), np.array([], dtype=int)) is None


def test_a_job_trained_at_a_far_too_high_learning_rate_is_flagged_everywhere(tmp_path, capsys):
    """erm at lr 10 (50,000x the paper's) predicts one class: its run is tagged, `run` ends with
    the warning, the table marks its cells with the footnote. (compare's mark: test_compare.py.)"""
    from benchmark.cli import main

    protocol = write_protocol(tmp_path, epochs=2)
    uri = f"jsonl:{tmp_path / 'store'}"
    base = ["run", "--protocol", str(protocol), "--tracking-uri", uri, "--sources", "synth5/studio"]
    assert main(base + ["--methods", "erm", "--set", "hparams.erm.lr=10"]) == 0
    out = capsys.readouterr().out
    assert "COLLAPSED" in out and "WARNING: 1 job(s) finished with a collapsed model" in out
    assert "erm on synth5/studio (seed 0): synth5/studio: " in out
    runs = finished_runs(uri)
    assert len(runs) == 1 and runs[0].tags["collapsed"].startswith("synth5/studio: ")
    capsys.readouterr()
    assert main(["table", "--protocol", "tiny", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    erm = next(line for line in table.splitlines() if line.startswith("| erm"))
    assert all(cell.strip().endswith("!") for cell in erm.strip("|").split("|")[1:])
    assert "at least one seed's model collapsed" in table
