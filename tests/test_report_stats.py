"""The report's statistics on hand-made numbers."""

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from ssl_bench.report.stats import (case_level_detectable_effect, detection_multiplier, estimate,
                                    minimum_detectable_effect, pooled_std, wilcoxon_test, within_pair_case_std)

Z_975_PLUS_Z_80 = 1.959963984540054 + 0.8416212335729143  # standard normal quantiles


def test_wilcoxon_test_is_scipys_with_the_differences_summarised():
    ours, theirs = [0.8, 0.7, 0.9, 0.65, 0.75], [0.78, 0.71, 0.85, 0.6, 0.7]
    test = wilcoxon_test(ours, theirs)
    assert test.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue)
    assert test.n_pairs == 5 and test.n_better == 4
    assert test.median_difference == pytest.approx(0.05) and test.mean_difference == pytest.approx(0.032)
    assert wilcoxon_test([], []) is None


def test_estimate_of_nothing_and_of_one_value():
    assert estimate([]).n == 0 and math.isnan(estimate([]).mean)
    one = estimate([0.5])
    assert (one.n, one.mean) == (1, 0.5) and math.isnan(one.std)


def test_pooled_std_weights_groups_by_their_degrees_of_freedom():
    # Deviations about each group's mean: (±0.01) and (-0.02, 0, +0.02): squares 2e-4 + 8e-4 over 1 + 2 dof.
    assert pooled_std([[0.80, 0.82], [0.70, 0.72, 0.74], [0.9]]) == pytest.approx(math.sqrt(1e-3 / 3))
    assert math.isnan(pooled_std([[0.8], []]))
    # Per-case differences of two run pairs about their own means: a pair's offset is not case noise.
    assert within_pair_case_std([[0.01, 0.03], [-0.05, -0.03]]) == pytest.approx(math.sqrt(4 * 1e-4 / 2))


def test_smallest_detectable_effect_by_hand():
    assert detection_multiplier() == pytest.approx(Z_975_PLUS_Z_80)
    # run SD 0.002 and per-case SD 0.02 over 50 cases: each pair's difference has variance 2*4e-6 + 4e-4/50 = 1.6e-5;
    # two pairs halve it.
    assert minimum_detectable_effect(0.002, 0.02, 50, 2) == pytest.approx(Z_975_PLUS_Z_80 * math.sqrt(8e-6))
    assert case_level_detectable_effect(0.02, 100) == pytest.approx(Z_975_PLUS_Z_80 * 0.002)
    assert math.isnan(minimum_detectable_effect(math.nan, 0.02, 50, 2))
    assert math.isnan(minimum_detectable_effect(0.002, 0.02, 50, 0))


def test_smallest_detectable_effect_is_detected_with_the_stated_power():
    """Simulated: pairs whose mean difference is the smallest detectable effect reach p < 0.05 in about 80% of
    comparisons (a z-test on the mean of the pairs' differences, as the formula assumes)."""
    rng = np.random.default_rng(0)
    run_std, case_std, n_cases, k = 0.003, 0.02, 52, 3
    effect = minimum_detectable_effect(run_std, case_std, n_cases, k)
    sd = math.sqrt((2 * run_std ** 2 + case_std ** 2 / n_cases) / k)
    detected = 0
    trials = 4000
    for _ in range(trials):
        pair_means = [effect + rng.normal(0, run_std) - rng.normal(0, run_std) + rng.normal(0, case_std, n_cases).mean()
                      for _ in range(k)]
        detected += abs(np.mean(pair_means)) / sd > 1.959963984540054
    assert detected / trials == pytest.approx(0.8, abs=0.03)
