"""The noise floor: how far one config moves when it is trained again, and the smallest effect the benchmark can
detect with the runs it has.

Replicates are runs of one dataset, method, fraction and draw whose configs differ at most in the training
seed (``trainer.seed``, a sweep axis), the tag and execution settings: the same split and settings trained again
with other initialisation, sampling and augmentation, or on other hardware. Their spread is the run-to-run
noise that the per-case paired tests do not see (those count test cases as the only randomness).

Per fraction, the smallest detectable effect combines both (stats.minimum_detectable_effect):
``(z_0.975 + z_0.8) * sqrt((2 * run_sd^2 + case_sd^2 / n_cases) / k)`` for a comparison averaging k (method run,
reference run) pairs, where run_sd is the pooled SD of replicate sets' mean Dice and case_sd the SD over cases
of the per-case paired difference within a run pair, pooled over the fraction's comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Dict, List, Optional, Tuple

from ssl_bench.config import EXECUTION_KEYS, schema_defaults
from ssl_bench.report.groups import Group, compare_runs
from ssl_bench.report.runs import Run
from ssl_bench.report.stats import (ALPHA, POWER, Estimate, PairedTest, case_level_detectable_effect,
                                    detection_multiplier, estimate, minimum_detectable_effect, pooled_std,
                                    within_pair_case_std)
from ssl_bench.utils.dicts import differing_keys

# Config keys in which replicates may differ.
_REPLICATE_KEYS = ("trainer.seed", "run.", *EXECUTION_KEYS)
# The effect a user asks the benchmark to resolve: half a Dice point, the size of method effects measured so far.
TARGET_EFFECT = 0.005


@dataclass
class Replicate:
    """One run of a set of replicates, against the set's first run."""
    method: str  # the method folder, e.g. supervised-seed100
    seed: int  # trainer.seed, or the draw when it is unset (run_seed)
    hardware: str
    dice: float
    vs_first: Optional[PairedTest]  # None for the first run itself
    run: Optional[Run] = None


@dataclass
class ReplicateSet:
    """Runs of one method, fraction and draw whose configs differ only in trainer.seed (and the tag and execution
    settings, hardware included): the same split and settings trained again."""
    dataset: str
    method: str  # metrics.json's method (without a tag)
    fraction: float
    draw: int
    replicates: List[Replicate]
    dice: Estimate  # over the replicates

    @property
    def varies(self) -> str:
        """What differs between the replicates: "seed", "hardware" or "seed, hardware"."""
        kinds = [name for name, values in (("seed", {r.seed for r in self.replicates}),
                                           ("hardware", {r.hardware for r in self.replicates})) if len(values) > 1]
        return ", ".join(kinds) or "nothing (a repeat)"

    @property
    def spread(self) -> float:
        return max(r.dice for r in self.replicates) - min(r.dice for r in self.replicates)


def summarize_replicates(runs: List[Run]) -> List[ReplicateSet]:
    """Sets of runs (two or more) of the same dataset, method, fraction and draw whose configs differ at most in
    the training seed, the tag and execution (a repeated seed on the same machine shows nondeterminism); the
    untagged run comes first, then by seed and hardware. Runs without config.yaml are left out: nothing shows
    what else they changed."""
    buckets: Dict[Tuple[str, str, float, int], List[Run]] = {}
    for run in runs:
        if run.config():
            m = run.metrics
            buckets.setdefault((run.dataset, m["method"], run.fraction, run.draw), []).append(run)
    sets = []
    for (dataset, method, fraction, draw), members in buckets.items():
        members.sort(key=lambda r: (r.method != method, r.seed, r.hardware, r.method))
        clusters: List[List[Run]] = []
        for run in members:
            home = next((c for c in clusters if not differing_keys(run.config(), c[0].config(), ignore=_REPLICATE_KEYS,
                                                                   defaults=schema_defaults())), None)
            if home is None:
                clusters.append([run])
            else:
                home.append(run)
        for cluster in clusters:
            if len(cluster) < 2:
                continue
            first = cluster[0]
            replicates = [Replicate(run.method, run.seed, run.hardware, run.result("last")["dice_mean"],
                                    compare_runs(run, first) if run is not first else None, run)
                          for run in cluster]
            sets.append(ReplicateSet(dataset, method, fraction, draw, replicates, estimate(r.dice for r in replicates)))
    return sorted(sets, key=lambda s: (s.dataset, s.fraction, s.method, s.draw))


@dataclass
class NoiseFloor:
    """One dataset and labeled fraction: run-to-run spread, per-case noise and the smallest detectable effect."""
    dataset: str
    fraction: float
    replicate_sets: List[ReplicateSet]  # at this fraction
    run_std: float  # pooled SD of one config's mean Dice over seeds and hardware (NaN: no replicates anywhere)
    run_std_source: str  # "this fraction", "all fractions" (no replicates at this one) or "none"
    case_std: float  # SD over cases of per-case paired differences within a run pair (NaN: no comparisons)
    n_cases: int
    n_run_pairs: int  # run pairs of the typical (median) comparison with supervised at this fraction
    detectable_effect: float  # with run and case noise
    case_level_effect: float  # what the pooled per-case test alone promises
    run_pairs_for_target: Optional[int]  # run pairs needed to detect TARGET_EFFECT


def noise_floor(groups: List[Group], replicate_sets: List[ReplicateSet],
                alpha: float = ALPHA, power: float = POWER) -> List[NoiseFloor]:
    """Per (dataset, fraction) of the groups."""
    floors = []
    for dataset in dict.fromkeys(g.dataset for g in groups):
        sets = [s for s in replicate_sets if s.dataset == dataset]
        all_std = pooled_std([[r.dice for r in s.replicates] for s in sets])
        for fraction in sorted({g.fraction for g in groups if g.dataset == dataset}):
            here = [s for s in sets if s.fraction == fraction]
            run_std = pooled_std([[r.dice for r in s.replicates] for s in here])
            source = "this fraction"
            if math.isnan(run_std):
                run_std, source = all_std, ("all fractions" if not math.isnan(all_std) else "none")
            compared = [g for g in groups if (g.dataset, g.fraction) == (dataset, fraction) and g.pairs]
            pairs = [p for g in compared for p in g.pairs]
            case_std = within_pair_case_std([p.differences() for p in pairs])
            n_cases = int(median(p.test.n_pairs for p in pairs)) if pairs else 0
            k = int(median(len(g.pairs) for g in compared)) if compared else 0
            effect = minimum_detectable_effect(run_std, case_std, n_cases, k, alpha, power)
            needed = None
            if not (math.isnan(run_std) or math.isnan(case_std)) and n_cases:
                per_pair = 2 * run_std ** 2 + case_std ** 2 / n_cases
                needed = max(1, math.ceil(detection_multiplier(alpha, power) ** 2 * per_pair / TARGET_EFFECT ** 2))
            floors.append(NoiseFloor(dataset, fraction, here, run_std, source, case_std, n_cases, k, effect,
                                     case_level_detectable_effect(case_std, k * n_cases, alpha, power), needed))
    return floors


def floor_of(floors: List[NoiseFloor], dataset: str, fraction: float) -> Optional[NoiseFloor]:
    return next((f for f in floors if (f.dataset, f.fraction) == (dataset, fraction)), None)
