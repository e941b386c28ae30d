"""`benchmark compare` is calibrated where the truth is known.

Simulated results of two methods, each trained model (one per source and seed) given a quality
offset shared by all its targets plus independent per-target noise, 5 sources x 5 targets: the
unseen cells of one (source, seed) move together, as real ones do. With no true difference (A/A)
the sign-flip p < 0.05 and the 95% interval excluding 0 must each happen in 2.5-7.5% of the
replicates; with a true difference, the test must reject about as often as the power formula
that `compare` uses to report the detectable difference predicts.

`python -m tests.test_compare_calibration` prints the A/A table (docs/comparisons.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.report.compare import power, summarise, variance_components

SOURCES = 5
REPLICATES = 400
SETTINGS = [  # seeds, sd of a trained model's shared offset, sd of each target's own noise
    (3, 0.04, 0.04),
    (3, 0.06, 0.02),
    (5, 0.04, 0.04),
    (3, 0.00, 0.05),
]


def unseen_cells(rng: np.random.Generator, seeds: int, shared: float, per_target: float,
                 difference: float = 0.0) -> pd.DataFrame:
    """Unseen (source, target, seed) cells of A - B: each model's offset shared by its targets."""
    s, n, t = SOURCES, seeds, SOURCES - 1
    offset_a, offset_b = rng.normal(0, shared, (2, s, n, 1))
    diff = (difference + offset_a - offset_b + rng.normal(0, per_target, (s, n, t))
            - rng.normal(0, per_target, (s, n, t)))
    source, seed, k = np.meshgrid(np.arange(s), np.arange(n), np.arange(t), indexing="ij")
    return pd.DataFrame({"source": source.ravel(), "seed": seed.ravel(),
                         "target": (source + 1 + k).ravel() % s, "diff": diff.ravel()})


def error_rates(seeds: int, shared: float, per_target: float, difference: float = 0.0,
                replicates: int = REPLICATES, seed: int = 0) -> tuple[float, float]:
    """Share of replicates with sign-flip p < 0.05, and with a 95% interval excluding 0."""
    rng = np.random.default_rng(seed)
    rejected = excluded = 0
    for _ in range(replicates):
        g = summarise("unseen", unseen_cells(rng, seeds, shared, per_target, difference))
        rejected += g.p_value < 0.05
        excluded += not (g.diff_ci[0] <= 0 <= g.diff_ci[1])
    return rejected / replicates, excluded / replicates


def true_unit_sd(shared: float, per_target: float) -> float:
    """sd of one unit's mean difference: two models' offsets, and 2 x (targets) noises averaged."""
    return float(np.sqrt(2 * shared**2 + 2 * per_target**2 / (SOURCES - 1)))


@pytest.mark.slow  # 35 s in all: `make test` and CI run it, `make check` does not
@pytest.mark.parametrize("seeds, shared, per_target", SETTINGS)
def test_an_aa_comparison_finds_a_difference_about_five_percent_of_the_time(seeds, shared, per_target):
    p_rate, ci_rate = error_rates(seeds, shared, per_target)
    assert 0.025 <= p_rate <= 0.075, f"p < 0.05 in {p_rate:.1%} of A/A comparisons"
    assert 0.025 <= ci_rate <= 0.075, f"95% CI excluded 0 in {ci_rate:.1%} of A/A comparisons"


@pytest.mark.slow
@pytest.mark.parametrize("seeds, shared, per_target", [(3, 0.04, 0.04), (5, 0.06, 0.02)])
def test_power_against_a_true_difference_is_what_the_formula_predicts(seeds, shared, per_target):
    sd = true_unit_sd(shared, per_target)
    units = SOURCES * seeds
    difference = 2.5 * sd / np.sqrt(units)  # about 60-70% power: between the easy ends
    predicted = power(difference, sd, units, SOURCES * (seeds - 1))
    observed, _ = error_rates(seeds, shared, per_target, difference, replicates=300, seed=1)
    assert abs(observed - predicted) <= 0.10, f"rejected {observed:.0%}, predicted {predicted:.0%}"
    # the variance components `compare` reports recover the unit sd the prediction used
    rng = np.random.default_rng(2)
    estimates = [variance_components(unseen_cells(rng, seeds, shared, per_target)).unit_sd for _ in range(60)]
    assert np.sqrt(np.mean(np.square(estimates))) == pytest.approx(sd, rel=0.1)


def test_the_detectable_difference_is_detected_with_eighty_percent_power():
    rng = np.random.default_rng(3)
    pw = variance_components(unseen_cells(rng, 5, 0.04, 0.04))
    assert power(pw.mde, pw.unit_sd, SOURCES * 5, pw.df) == pytest.approx(0.8, abs=1e-6)
    need = pw.seeds_for(pw.mde / 2)  # half the difference: about four times the units
    assert need is not None and 14 <= need <= 24


if __name__ == "__main__":
    print("| seeds | shared offset sd | per-target sd | sign-flip p < 0.05 | 95% CI excludes 0 |")
    print("|---|---|---|---|---|")
    for seeds, shared, per_target in SETTINGS:
        p_rate, ci_rate = error_rates(seeds, shared, per_target, replicates=1000, seed=10)
        print(f"| {seeds} | {100 * shared:g} pts | {100 * per_target:g} pts | {p_rate:.1%} | {ci_rate:.1%} |")
