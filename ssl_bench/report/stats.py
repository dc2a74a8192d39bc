"""The statistics of the report, as pure functions of numbers: estimates over draws, the paired Wilcoxon test,
pooled standard deviations and the smallest effect a comparison can detect."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import numpy as np

CONFIDENCE = 0.95
# The smallest detectable effect: a two-sided test at ALPHA detects it with probability POWER.
ALPHA = 0.05
POWER = 0.8


@dataclass
class Estimate:
    """Mean, sample std and the t-interval of the mean (NaN with fewer than two values)."""
    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclass
class PairedTest:
    n_pairs: int
    median_difference: float
    p_value: float
    n_better: int = 0  # pairs where the method's case Dice is above the reference's
    mean_difference: float = math.nan


def estimate(values: Iterable[float]) -> Estimate:
    # Here: scipy.stats takes ~2 s to import, and every ssl-bench command imports ssl_bench.report.
    from scipy import stats
    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return Estimate(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return Estimate(len(x), mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return Estimate(len(x), mean, std, mean - half, mean + half)


def wilcoxon_test(ours: Sequence[float], theirs: Sequence[float]) -> Optional[PairedTest]:
    """Two-sided Wilcoxon signed-rank test of paired values (scipy.stats.wilcoxon); None without pairs."""
    # Here: scipy.stats takes ~2 s to import, and every ssl-bench command imports ssl_bench.report.
    from scipy.stats import wilcoxon
    if len(ours) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical vectors: scipy warns, p = 1
        p_value = float(wilcoxon(ours, theirs).pvalue)
    differences = np.subtract(ours, theirs)
    return PairedTest(len(differences), float(np.median(differences)), p_value, int((differences > 0).sum()),
                      float(differences.mean()))


def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """The pooled sample standard deviation of several groups around their own means,
    sqrt(sum of squared deviations / sum of (n_i - 1)); NaN when no group has two values."""
    squares, dof = 0.0, 0
    for values in groups:
        x = np.asarray(values, dtype=float)
        if len(x) >= 2:
            squares += float(((x - x.mean()) ** 2).sum())
            dof += len(x) - 1
    return math.sqrt(squares / dof) if dof else math.nan


def detection_multiplier(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_(1 - alpha/2) + z_power: the smallest detectable effect in standard errors (normal approximation)."""
    # Here: scipy.stats takes ~2 s to import, and every ssl-bench command imports ssl_bench.report.
    from scipy.stats import norm
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def minimum_detectable_effect(run_std: float, case_std: float, n_cases: int, n_run_pairs: int,
                              alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference in mean Dice between a method and its reference that a two-sided test at
    ``alpha`` detects with probability ``power``, when the comparison averages ``n_run_pairs`` (method run,
    reference run) pairs over ``n_cases`` test cases each.

    Each pair's difference of means varies by the training noise of both runs (2 run_std^2, run_std being the
    spread of one config's runs over training seeds and hardware) and by the sampling of test cases
    (case_std^2 / n_cases, case_std the SD over cases of the per-case paired difference); the average of the
    pairs by their sum over n_run_pairs. Normal approximation (with so few runs a t-test needs more).
    NaN when run_std is unknown."""
    if n_run_pairs < 1 or n_cases < 1 or math.isnan(run_std) or math.isnan(case_std):
        return math.nan
    variance = (2 * run_std ** 2 + case_std ** 2 / n_cases) / n_run_pairs
    return detection_multiplier(alpha, power) * math.sqrt(variance)


def case_level_detectable_effect(case_std: float, n_pairs: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest detectable effect if every (run pair, case) were an independent pair, as the pooled
    Wilcoxon test treats them: what the per-case test alone promises."""
    if n_pairs < 1 or math.isnan(case_std):
        return math.nan
    return detection_multiplier(alpha, power) * case_std / math.sqrt(n_pairs)


def within_pair_case_std(differences_per_pair: List[Sequence[float]]) -> float:
    """The SD over test cases of per-case paired differences, each run pair's differences taken about their own
    mean (a run pair's offset is training noise or the effect, not case-to-case variation)."""
    return pooled_std(differences_per_pair)
