"""`benchmark compare`: paired differences, their intervals and tests, on results with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.report.compare import compare, render
from benchmark.core.errors import BenchmarkError
from benchmark.store import RESULT_COLUMNS, open_store, schema

from .test_tables import FakeJob

DOMAINS = ["p", "q", "r"]


def results(shift: float, seeds=(0, 1, 2), noise: float = 0.01, skip: tuple | None = None) -> pd.DataFrame:
    """Accuracies of methods "a" and "b" on every (source, target, seed): a = b + shift (+ noise)."""
    rng = np.random.default_rng(1)
    rows = []
    for source in DOMAINS:
        for target in DOMAINS:
            for seed in seeds:
                base = 0.5 + 0.2 * (source == target)
                rows.append(["b", "r18", source, seed, target, "acc", base + rng.normal(0, noise), "env", "", False])
                if (source, target, seed) != skip:
                    rows.append(["a", "r18", source, seed, target, "acc", base + shift + rng.normal(0, noise), "env", "", False])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_a_method_better_everywhere_is_found_better():
    c = compare(results(0.05, noise=0.003), "a", "b")
    unseen = next(g for g in c.groups if g.group == "unseen")
    assert unseen.cells == 18 and unseen.mean_diff == pytest.approx(0.05, abs=0.01)
    assert unseen.diff_ci[0] > 0.03 and unseen.p_value == pytest.approx(2 / 2**9) and unseen.p_exact  # 9 units: the smallest p there is
    assert unseen.p_improvement == 1.0 and unseen.p_improvement_ci == (1.0, 1.0)
    assert c.per_cell["outside_noise"].all() and not c.missing


def test_equal_methods_have_an_interval_that_covers_zero():
    c = compare(results(0.0), "a", "b")
    for group in c.groups:
        assert group.diff_ci[0] < 0 < group.diff_ci[1] and group.p_value > 0.05
        assert group.p_improvement_ci[0] < 0.5 < group.p_improvement_ci[1]
    assert c.per_cell["outside_noise"].mean() < 0.5


def test_missing_cells_are_named_not_imputed_and_the_rest_is_compared():
    c = compare(results(0.05, skip=("q", "r", 1)), "a", "b")
    assert c.missing == ["a has no q → r (seed 1)"] and len(c.cells) == 26
    text = render(c, "last epoch")
    assert "a has no q → r (seed 1)" in text and "never imputed" in text
    with pytest.raises(BenchmarkError, match="no FINISHED results of c"):
        compare(results(0.05), "a", "c")


def test_one_seed_says_there_is_no_noise_to_compare_with():
    c = compare(results(0.05, seeds=(0,)), "a", "b")
    assert c.per_cell["outside_noise"].isna().all()
    assert "One seed per cell" in render(c, "last epoch")


def test_the_command_writes_markdown_and_a_figure(tmp_path, capsys):
    store = open_store(f"jsonl:{tmp_path / 'runs'}")
    frame = results(0.05)
    for (method, source, seed), group in frame.groupby(["method", "source", "seed"]):
        log = store.open_job(store.experiment("cmp"), "g", FakeJob("cmp", method, source, seed, "r18:none"))
        log.params({schema.BACKBONE: "r18:none"})
        log.metrics({schema.target_metric(t, "acc"): v for t, v in zip(group["target"], group["value"])}, step=1)
        log.finish("FINISHED")
    out = tmp_path / "cmp" / "a_vs_b.md"
    assert main(["compare", "a", "b", "--protocol", "cmp", "--tracking-uri", store.uri, "--out", str(out)]) == 0
    text = out.read_text()
    assert "a vs b: acc (%), last epoch" in text and "| unseen " in text and "| p → q " in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len({line.count("|") for line in rows[:3]}) == 1  # the summary parses as one table
    with Image.open(out.with_suffix(".png")) as image:
        assert image.size[0] >= 1000  # 200 dpi
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert main(["compare", "a", "a", "--protocol", "cmp", "--tracking-uri", store.uri]) == 2
    assert "not with itself" in capsys.readouterr().err


def test_the_summary_names_the_unit_the_test_the_correction_and_the_detectable_difference():
    c = compare(results(0.05, noise=0.02), "a", "b")
    assert [g.units for g in c.groups] == [9, 9] and [g.cells for g in c.groups] == [9, 18]
    text = render(c, "last epoch", mde=0.01)
    assert "unit: the pair of trained models sharing (source, seed), 9 units (3 sources" in text
    assert "sign-flip p" in text and "exact (every sign pattern)" in text
    assert "Benjamini–Hochberg" in text and "false discovery rate over the 9 cells" in text
    assert "the smallest detectable difference is" in text and "To detect 1.00 points:" in text
    unseen = next(g for g in c.groups if g.group == "unseen")
    assert unseen.power.mde > 0 and unseen.power.seeds_for(0.01) > unseen.power.seeds_for(0.02)
    iqm = {x.method: x for x in c.aggregates}
    assert iqm["a"].iqm == pytest.approx(iqm["b"].iqm + 0.05, abs=0.02)


def test_per_cell_stars_are_a_family_not_twenty_five_separate_tests():
    """With no difference, uncorrected t-tests over seeds star about 5% of the cells; BH over the
    family stars none in nearly every comparison."""
    from benchmark.report.compare import discoveries, paired_p

    rng = np.random.default_rng(4)
    uncorrected = corrected = 0
    for _ in range(200):
        p = [paired_p(rng.normal(0, 0.03, 3)) for _ in range(25)]
        uncorrected += sum(x < 0.05 for x in p)
        corrected += any(discoveries(p))
    assert 0.6 * 25 * 0.05 * 200 < uncorrected  # about 1.25 stars per comparison uncorrected
    assert corrected / 200 <= 0.08  # at least one star in at most ~5% of comparisons


def test_the_command_prints_the_seeds_a_difference_needs_and_draws_the_profiles(tmp_path, capsys):
    store = open_store(f"jsonl:{tmp_path / 'runs'}")
    for (method, source, seed), group in results(0.05, noise=0.02).groupby(["method", "source", "seed"]):
        log = store.open_job(store.experiment("cmp"), "g", FakeJob("cmp", method, source, seed, "r18:none"))
        log.params({schema.BACKBONE: "r18:none"})
        log.metrics({schema.target_metric(t, "acc"): v for t, v in zip(group["target"], group["value"])}, step=1)
        log.finish("FINISHED")
    out = tmp_path / "a_vs_b.md"
    assert main(["compare", "a", "b", "--protocol", "cmp", "--tracking-uri", store.uri, "--mde", "2",
                 "--out", str(out)]) == 0
    assert "To detect 2.00 points: " in capsys.readouterr().out
    with Image.open(tmp_path / "a_vs_b_profile.png") as image:
        assert image.size[0] >= 1000


def test_a_collapsed_seed_is_marked_in_the_per_cell_rows_and_named():
    frame = results(0.02)
    frame.loc[(frame["method"] == "a") & (frame["source"] == DOMAINS[0]) & (frame["seed"] == 1), "collapsed"] = True
    text = render(compare(frame, "a", "b"), "last epoch")
    rows = [line for line in text.splitlines() if line.startswith(f"| {DOMAINS[0]} →")]
    assert rows and all(line.split("|")[3].strip().endswith("!") for line in rows)
    assert not any(line.split("|")[4].strip().endswith("!") for line in rows)  # b never collapsed
    assert f"Here: a on {DOMAINS[0]} (seed 1)." in text
    assert "collapsed" not in render(compare(results(0.02), "a", "b"), "last epoch")


@pytest.mark.parametrize("metric, scale, unit", [("ece", 100, "points"), ("nll", 1, "nats")])
def test_a_lower_is_better_metric_counts_a_lower_value_as_the_improvement(metric, scale, unit, tmp_path):
    """A planted calibration gain: A's ECE (or NLL) 0.05 lower on every cell. The mean difference
    is negative, P(A < B) is 1, and the text says which way is better and in which unit."""
    from benchmark.report.compare import figure, profile_figure

    frame = results(-0.05, noise=0.003).assign(metric=metric)
    c = compare(frame, "a", "b", metric)
    unseen = next(g for g in c.groups if g.group == "unseen")
    assert unseen.mean_diff == pytest.approx(-0.05, abs=0.01) and unseen.p_improvement == 1.0
    text = render(c, "last epoch")
    assert f"{metric} ({'%' if scale == 100 else 'nats'}, lower is better)" in text and "P(a < b)" in text
    row = next(line for line in text.splitlines() if line.startswith("| unseen"))
    assert float(row.split("|")[4]) == pytest.approx(-0.05 * scale, abs=0.01 * scale)
    assert f"{unit} (sd)" in text
    # The same numbers read as an accuracy would be a loss: the direction is the metric's.
    assert compare(frame.assign(metric="acc"), "a", "b").groups[1].p_improvement == 0.0
    assert figure(c, "last epoch", tmp_path / "cells") and profile_figure(c, "last epoch", tmp_path / "p") == []
