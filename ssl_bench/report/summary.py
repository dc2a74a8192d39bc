"""Everything a report shows, computed once from the runs: the tables, plots and W&B read from it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ssl_bench.report.coverage import SweepCoverage, sweep_coverage
from ssl_bench.report.groups import (AlphaGroup, Group, MethodCost, VariantComparison, fraction_groups, method_costs,
                                     summarize_alpha, summarize_groups, variant_comparisons)
from ssl_bench.report.noise_floor import NoiseFloor, ReplicateSet, noise_floor, summarize_replicates
from ssl_bench.report.numeric_settings import SettingComparison, compare_settings
from ssl_bench.report.runs import LoadedRuns, Run


@dataclass
class Summary:
    loaded: LoadedRuns
    groups: List[Group]  # every (dataset, method, fraction)
    alpha_groups: List[AlphaGroup]
    replicate_sets: List[ReplicateSet]
    noise_floors: List[NoiseFloor]
    costs: List[MethodCost]
    coverage: List[SweepCoverage]
    settings: List[SettingComparison] = field(default_factory=list)  # numeric settings against the protocol's
    variants: List[VariantComparison] = field(default_factory=list)  # each method against its controls, ablations

    @property
    def runs(self) -> List[Run]:
        return self.loaded.runs

    def fraction_groups(self) -> List[Group]:
        """The groups of the labeled-fraction comparison (partial-annotation variants aside)."""
        return fraction_groups(self.groups, self.runs)

    def datasets(self) -> List[str]:
        return list(dict.fromkeys(g.dataset for g in self.groups))

    def usual_hardware(self, dataset: str) -> str:
        """The hardware most of a dataset's runs ran on."""
        return Counter(r.hardware for r in self.runs if r.dataset == dataset).most_common(1)[0][0]

    def cost(self, dataset: str, method: str) -> Optional[MethodCost]:
        return next((c for c in self.costs if (c.dataset, c.method) == (dataset, method)), None)


def summarize(loaded: LoadedRuns, sweeps_dir: Optional[Path] = None) -> Summary:
    """The report's content; ``sweeps_dir`` holds the sweep files whose missing cells are listed (None: none)."""
    groups = summarize_groups(loaded.runs)
    replicate_sets = summarize_replicates(loaded.runs)
    compared = fraction_groups(groups, loaded.runs)
    return Summary(loaded, groups, summarize_alpha(loaded.runs), replicate_sets, noise_floor(compared, replicate_sets),
                   method_costs(compared),
                   sweep_coverage(loaded.runs, sweeps_dir, loaded.runs_dir) if sweeps_dir is not None else [],
                   compare_settings(loaded.runs), variant_comparisons(compared))
