"""A method's runs in another numeric setting (``trainer.precision``, e.g. the ``bf16`` sweep) against its runs in
the protocol's (32-true), not against ``supervised``: the same split, seed and everything else, so that the per-case
difference is the setting's alone. A faster setting may become a default only where it changes no result beyond
the run-to-run noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ssl_bench.config import EXECUTION_KEYS, schema_defaults
from ssl_bench.report.groups import RunPair, difference_over_draws, paired_test, run_pairs
from ssl_bench.report.runs import Run
from ssl_bench.report.stats import Estimate, PairedTest
from ssl_bench.utils.dicts import differing_keys

# Settings that change how a run computes its numbers (not which): compared with the method's own runs.
SETTING_KEYS = ("trainer.precision",)
# What else may differ between such a run and the protocol's run it is paired with.
_ALLOWED = ("run.", "data.draw", "trainer.seed", *EXECUTION_KEYS)


@dataclass
class SettingComparison:
    """A (dataset, method folder, fraction) in another setting, against the method's untagged runs."""
    dataset: str
    method: str  # e.g. mean_teacher-precisionbf16-mixed
    protocol_method: str  # e.g. mean_teacher
    fraction: float
    setting: str  # e.g. "trainer.precision: bf16-mixed vs 32-true"
    pairs: List[RunPair]
    test: Optional[PairedTest]  # pooled over draws, a draw's replicates averaged case by case

    @property
    def difference(self) -> Estimate:
        """Mean Dice minus the protocol run's, over draws (each draw the mean over its run pairs)."""
        return difference_over_draws(self.pairs)


def _setting_of(run: Run, protocol_run: Run) -> Optional[str]:
    """"key: ours vs theirs" when the two configs differ in SETTING_KEYS and nothing else; otherwise None."""
    ours, theirs = run.config(), protocol_run.config()
    if not (ours and theirs):
        return None
    keys = differing_keys(ours, theirs, ignore=_ALLOWED, defaults=schema_defaults())
    if not keys or any(k not in SETTING_KEYS for k in keys):
        return None
    return "; ".join(f"{k}: {ours.get(k)} vs {theirs.get(k)}" for k in keys)


def compare_settings(runs: List[Run]) -> List[SettingComparison]:
    """Every tagged run that differs from its method's untagged runs (same dataset and fraction) only in
    SETTING_KEYS, grouped by method folder and paired with them draw by draw, seed by seed."""
    protocol: Dict[Tuple[str, str, float], List[Run]] = {}
    for run in runs:
        if run.line == run.metrics["method"]:
            protocol.setdefault((run.dataset, run.line, run.fraction), []).append(run)
    found: Dict[Tuple[str, str, float], Tuple[str, List[Run]]] = {}
    for run in runs:
        references = protocol.get((run.dataset, run.metrics["method"], run.fraction))
        if run.line == run.metrics["method"] or not references:
            continue
        setting = _setting_of(run, references[0])
        if setting is not None:
            found.setdefault((run.dataset, run.line, run.fraction), (setting, []))[1].append(run)
    comparisons = []
    for (dataset, method, fraction), (setting, members) in sorted(found.items()):
        base = members[0].metrics["method"]
        references = protocol[(dataset, base, fraction)]
        comparisons.append(SettingComparison(dataset, method, base, fraction, setting, run_pairs(members, references),
                                             paired_test(members, references)))
    return comparisons
