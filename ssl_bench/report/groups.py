"""Runs summarised per (dataset, method, fraction), each compared with its supervised reference.

The method of a run is its method folder, ``<method>[-<tag>]`` (runs/<dataset>/<method>[-<tag>]/frac<f>/
draw<d>/), so that variants such as an extra sweep axis are reported apart, and each is compared with the
supervised run of the same tag (or, for a variant of a method-only setting, the untagged supervised run). A
``seed<s>`` tag of a training-seed axis is no variant: supervised-seed100 is a replicate of supervised.

Replicates (runs of one config with another training seed, or on other hardware) are pooled: a group's Dice
is the mean over draws of each draw's mean over its replicates, and its paired test pools the per-case pairs
of every method run with the reference run of the same draw and seed on the same hardware; only a draw and seed
without any same-hardware pair is compared across hardware, and the comparison is marked as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ssl_bench.config import EXECUTION_KEYS, schema_defaults
from ssl_bench.report.runs import REFERENCE_METHOD, Run, alpha_line
from ssl_bench.report.stats import Estimate, PairedTest, estimate, wilcoxon_test
from ssl_bench.utils.dicts import differing_keys

FULL_FRACTION = 1.0
CHECKPOINTS = ("last", "best")
# The audit checkpoint: best on the TEST cases, as papers that select on the test set report it.
TEST_SELECTED = "test_best"


@dataclass
class RunPair:
    """A method run against the reference run of the same draw and seed, with the paired test of their cases."""
    run: Run
    reference: Run
    test: PairedTest

    @property
    def draw(self) -> int:
        return self.run.draw

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def dice(self) -> float:
        return self.run.result("last")["dice_mean"]

    @property
    def reference_dice(self) -> float:
        return self.reference.result("last")["dice_mean"]

    @property
    def crosses_hardware(self) -> bool:
        return self.run.hardware != self.reference.hardware

    def differences(self) -> List[float]:
        return [self.run.case_dice[c] - self.reference.case_dice[c] for c in _common_cases(self.run, self.reference)]


@dataclass
class SelectionAudit:
    """The test-selection audit of a group, over the runs that have it (all four over the same runs, so that the
    inflation is the difference of two columns): Dice of the last checkpoint, of the best on validation, of the
    best on the test cases, and the last one's shortfall from the latter (the test-selection inflation)."""
    last: Estimate
    best_on_validation: Estimate
    best_on_test: Estimate
    inflation: Estimate


def selection_audit_of(runs: List[Run]) -> Optional[SelectionAudit]:
    audited = [r for r in runs if r.has_checkpoint(TEST_SELECTED)]
    if not audited:
        return None

    def dice(checkpoint: str) -> Estimate:
        return per_draw(audited, lambda r: r.result(checkpoint)["dice_mean"])

    return SelectionAudit(dice("last"), dice("best"), dice(TEST_SELECTED),
                         per_draw(audited, lambda r: r.result(TEST_SELECTED)["dice_mean"] - r.result("last")["dice_mean"]))


@dataclass
class Group:
    """A (dataset, method, fraction) over its runs: draws, and within a draw its replicates."""
    dataset: str
    method: str  # the method folder without a training-seed tag
    fraction: float
    reference_method: str
    classes: List[str]
    runs: List[Run]
    dice: Estimate  # over draws, each draw the mean over its replicates
    class_dice: Dict[str, Estimate]
    hd95: Estimate
    best_dice: Estimate
    vs_reference: Optional[PairedTest]
    # Protocol settings (config keys other than the method's own, the tag, the draw and execution) in which the
    # group's runs differ from the reference runs they are compared with, e.g. "model.dropout: 0.1 vs 0.0".
    protocol_differences: List[str] = field(default_factory=list)
    pairs: List[RunPair] = field(default_factory=list)
    # The checkpoint best on the test cases, over the runs that have it (None when none has).
    test_selection: Optional["SelectionAudit"] = None
    # Jaccard and ASD (the left-atrium papers' other two numbers), over the runs whose records have them (None when
    # none has: older records scored Dice and HD95 only).
    jaccard: Optional[Estimate] = None
    asd: Optional[Estimate] = None

    @property
    def difference(self) -> Optional[Estimate]:
        """Mean Dice minus the reference's over draws, each draw the mean over its run pairs; None without pairs."""
        return difference_over_draws(self.pairs) if self.pairs else None

    @property
    def base_method(self) -> str:
        return self.runs[0].metrics["method"]

    @property
    def is_variant(self) -> bool:
        """A tagged variant (an ablation, a control, another setting) rather than the method as the protocol runs it."""
        return self.method != self.base_method

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    @property
    def hardware(self) -> List[str]:
        return sorted({r.hardware for r in self.runs})

    @property
    def cross_hardware_pairs(self) -> List[RunPair]:
        return [p for p in self.pairs if p.crosses_hardware]


def difference_over_draws(pairs: List[RunPair]) -> Estimate:
    """Mean Dice of the runs minus their references' over draws, each draw the mean over its run pairs."""
    by_draw: Dict[int, List[float]] = {}
    for p in pairs:
        by_draw.setdefault(p.draw, []).append(p.dice - p.reference_dice)
    return estimate(sum(v) / len(v) for _, v in sorted(by_draw.items()))


def _common_cases(run: Run, reference: Run) -> List[str]:
    return [c for c, v in run.case_dice.items()
            if not (math.isnan(v) or math.isnan(reference.case_dice.get(c, math.nan)))]


def match_references(runs: Iterable[Run], references: List[Run]) -> List[Tuple[Run, Run]]:
    """Each run with the reference run of the same draw and seed on the same hardware. A run without one is
    compared across hardware only when no run of its draw and seed has a same-hardware reference, and then with
    every reference run of its draw and seed (whose pairs paired_test averages): such a pair's difference includes
    the hardware's own effect, which a same-hardware pair of that draw and seed does not. Runs without a reference
    of their draw and seed are left out."""
    by_cell: Dict[Tuple[int, int], List[Run]] = {}
    for run in runs:
        by_cell.setdefault((run.draw, run.seed), []).append(run)
    pairs = []
    for (draw, seed), members in by_cell.items():
        candidates = [r for r in references if (r.draw, r.seed) == (draw, seed)]
        same = [(run, next(r for r in candidates if r.hardware == run.hardware)) for run in members
                if any(r.hardware == run.hardware for r in candidates)]
        pairs += same or [(run, reference) for run in members for reference in candidates]
    return pairs


def paired_test(runs: List[Run], references: List[Run]) -> Optional[PairedTest]:
    """Wilcoxon signed-rank (two-sided) of per-case Dice against the reference's.

    Pairs are (draw, test case): each run is matched with a reference run (match_references), cases by case_id
    (cases with NaN on either side dropped), and a draw's run pairs (its replicates: training seeds, hardware) are
    averaged case by case, as the Dice tables average them, so that a replicate does not count its test cases
    again as if they were new ones. The draws share the test cases, so the pairs of two draws are not fully
    independent.
    """
    return _pooled_test(match_references(runs, references))


def compare_runs(run: Run, other: Run) -> Optional[PairedTest]:
    """The paired test of two runs' cases, whatever their draws and seeds (e.g. two replicates)."""
    return _pooled_test([(run, other)])


def _pooled_test(pairs: List[Tuple[Run, Run]]) -> Optional[PairedTest]:
    """The test over (draw, case) pairs, each the mean over that draw's run pairs."""
    by_unit: Dict[Tuple[int, str], List[Tuple[float, float]]] = {}
    for run, reference in pairs:
        for case_id in _common_cases(run, reference):
            by_unit.setdefault((run.draw, case_id), []).append((run.case_dice[case_id], reference.case_dice[case_id]))
    means = [np.mean(values, axis=0) for values in by_unit.values()]
    return wilcoxon_test([m[0] for m in means], [m[1] for m in means])


def run_pairs(runs: List[Run], references: List[Run]) -> List[RunPair]:
    """Each run against its reference (paired_test on that pair alone), in (draw, seed, hardware) order: the
    pooled test can hide a gain on one split and a loss on another."""
    out = []
    for run, reference in match_references(sorted(runs, key=lambda r: (r.draw, r.seed, r.hardware)), references):
        test = compare_runs(run, reference)
        if test is not None:
            out.append(RunPair(run, reference, test))
    return out


# Config keys that may differ between a method variant and the supervised run it is compared with.
_VARIANT_KEYS = ("method.", "run.", "data.draw", "trainer.seed", *EXECUTION_KEYS)


def _method_keys(run: Run) -> Tuple[str, ...]:
    """The config keys that belong to ``run``'s method (its own settings, tag, draw, seed, execution)."""
    # A method's own first stage (contrastive's pretraining, recorded in metrics.json) sets the initialisation.
    return _VARIANT_KEYS + (("model.init_from",) if "pretrain_run_dir" in run.metrics else ())


def _protocol_keys(ours: dict, theirs: dict, run: Run) -> List[str]:
    """The keys of two flat configs (``run``'s and its reference's) that differ outside ``run``'s method keys."""
    return differing_keys(ours, theirs, ignore=_method_keys(run), defaults=schema_defaults())


def differs_only_in_method(run: Run, reference: Run) -> bool:
    """Whether two runs' configs differ only in method settings (and tag, draw, seed, execution): the same data,
    network, optimizer and budget. False when either has no config.yaml."""
    ours, theirs = run.config(), reference.config()
    return bool(ours and theirs) and not _protocol_keys(ours, theirs, run)


def protocol_differences(run: Run, reference: Run) -> List[str]:
    """"key: ours vs theirs" for each protocol setting in which ``run`` differs from its reference: a comparison that
    is not like for like (co_training's dropout, say) is shown as such. Empty when either has no config.yaml."""
    ours, theirs = run.config(), reference.config()
    if not (ours and theirs):
        return []
    return [f"{k}: {ours.get(k)} vs {theirs.get(k)}" for k in _protocol_keys(ours, theirs, run)]


GroupKey = Tuple[str, str, float]


def group_key(run: Run) -> GroupKey:
    return run.dataset, run.line, run.fraction


def reference_of(members: List[Run], by_key: Dict[GroupKey, List[Run]]) -> str:
    """The supervised runs a group is compared with: those of its tag; for a variant on a method-only
    hyperparameter (e.g. mean_teacher-lambda_max1.0, a sweep axis on method.lambda_max), which has no supervised
    run of its own tag, the untagged supervised runs, once their configs show nothing else differs."""
    run = members[0]
    dataset, _, fraction = group_key(run)
    tagged = run.reference_method
    plain = by_key.get((dataset, REFERENCE_METHOD, fraction))
    if (dataset, tagged, fraction) not in by_key and plain and differs_only_in_method(run, plain[0]):
        return REFERENCE_METHOD
    return tagged


def per_draw(runs: List[Run], value: Callable[[Run], float]) -> Estimate:
    """An estimate over draws of ``value``, each draw's value the mean over its runs (replicates)."""
    by_draw: Dict[int, List[float]] = {}
    for run in runs:
        by_draw.setdefault(run.draw, []).append(value(run))
    return estimate(sum(v) / len(v) for _, v in sorted(by_draw.items()))


def per_draw_where_scored(runs: List[Run], metric: str) -> Optional[Estimate]:
    """per_draw of the last checkpoint's ``metric`` over the runs whose results have it; None if none has."""
    scored = [r for r in runs if metric in r.result("last")]
    return per_draw(scored, lambda r: r.result("last")[metric]) if scored else None


def summarize_groups(runs: List[Run]) -> List[Group]:
    by_key: Dict[GroupKey, List[Run]] = {}
    for run in runs:
        by_key.setdefault(group_key(run), []).append(run)
    groups = []
    for (dataset, method, fraction), members in by_key.items():
        classes, reference = members[0].metrics["classes"], reference_of(members, by_key)
        comparable = method != reference and (dataset, reference, fraction) in by_key
        references = by_key.get((dataset, reference, fraction), [])
        groups.append(Group(
            dataset, method, fraction, reference, classes, members,
            dice=per_draw(members, lambda r: r.result("last")["dice_mean"]),
            class_dice={c: per_draw(members, lambda r, c=c: r.result("last")[f"dice_{c}"]) for c in classes},
            hd95=per_draw(members, lambda r: r.result("last")["hd95_mean"]),
            best_dice=per_draw(members, lambda r: r.result("best")["dice_mean"]),
            vs_reference=paired_test(members, references) if comparable else None,
            protocol_differences=protocol_differences(members[0], references[0]) if comparable else [],
            pairs=run_pairs(members, references) if comparable else [],
            test_selection=selection_audit_of(members),
            jaccard=per_draw_where_scored(members, "jaccard_mean"), asd=per_draw_where_scored(members, "asd_mean")))
    return sorted(groups, key=lambda g: (g.dataset, g.fraction, g.method))


@dataclass
class VariantComparison:
    """A method against one of its tagged variants at one fraction (a control such as cps-lambda_max0.0, an
    ablation such as ua_mt-dropout0.0), run by run: what the method's own mechanism adds over the variant, where
    the comparison with supervised mixes it with what the variant alone gains."""
    method: Group
    variant: Group
    test: Optional[PairedTest]  # pooled over the run pairs, as paired_test
    pairs: List[RunPair]  # each method run with the variant run of the same draw and seed

    @property
    def difference(self) -> Estimate:
        """The method's mean Dice minus the variant's over draws, each draw the mean over its run pairs."""
        return difference_over_draws(self.pairs)


def variant_comparisons(groups: List[Group]) -> List[VariantComparison]:
    """Each tagged variant against its method's groups of the same dataset and fraction, where their runs pair."""
    plain = {(g.dataset, g.method, g.fraction): g for g in groups if not g.is_variant}
    out = []
    for variant in (g for g in groups if g.is_variant):
        method = plain.get((variant.dataset, variant.base_method, variant.fraction))
        pairs = run_pairs(method.runs, variant.runs) if method else []
        if pairs:
            out.append(VariantComparison(method, variant, _pooled_test([(p.run, p.reference) for p in pairs]), pairs))
    return out


def fraction_groups(groups: List[Group], runs: List[Run]) -> List[Group]:
    """The groups of a labeled-fraction comparison: partial-annotation variants (compared against alpha) aside."""
    alpha_variants = {r.line for r in runs if alpha_line(r) is not None}
    return [g for g in groups if g.method not in alpha_variants]


@dataclass
class MethodCost:
    """What a method costs per training step and in parameters, on each hardware its runs used."""
    dataset: str
    method: str
    n_parameters: int  # trained parameters
    n_parameters_total: int
    # hardware -> (runs, median seconds per step, median seconds per step of supervised on that hardware)
    seconds_per_step: Dict[str, Tuple[int, float, float]]

    def relative_step_cost(self) -> Optional[Tuple[float, str]]:
        """Median s/step over supervised's on the same hardware, on the hardware with most of this method's runs
        that also has supervised runs; None when no hardware has both."""
        usable = [(n, hw) for hw, (n, ours, theirs) in self.seconds_per_step.items() if not math.isnan(theirs)]
        if not usable:
            return None
        _, hardware = max(usable)
        _, ours, theirs = self.seconds_per_step[hardware]
        return ours / theirs, hardware


def step_cost(run: Run) -> Optional[float]:
    """Seconds per training step, a method's own first stage (contrastive's pretraining) spread over its steps:
    what a user pays per step to get the model."""
    m = run.metrics
    if "seconds_per_step" not in m:
        return None
    extra = m.get("pretrain_seconds_per_step", 0.0) * m.get("pretrain_steps", 0) / m["steps"] if m.get("steps") else 0.0
    return m["seconds_per_step"] + extra


def method_costs(groups: List[Group]) -> List[MethodCost]:
    """Per (dataset, method), over every fraction: step costs are per step, whatever the labeled fraction."""
    runs_by_method: Dict[Tuple[str, str], List[Run]] = {}
    for g in groups:
        runs_by_method.setdefault((g.dataset, g.method), []).extend(g.runs)
    costs = []
    for (dataset, method), runs in runs_by_method.items():
        supervised = runs_by_method.get((dataset, REFERENCE_METHOD), [])
        by_hardware: Dict[str, Tuple[int, float, float]] = {}
        for hardware in sorted({r.hardware for r in runs}):
            ours = [c for c in (step_cost(r) for r in runs if r.hardware == hardware) if c is not None]
            theirs = [c for c in (step_cost(r) for r in supervised if r.hardware == hardware) if c is not None]
            if ours:
                by_hardware[hardware] = (len(ours), median(ours), median(theirs) if theirs else math.nan)
        costs.append(MethodCost(dataset, method, int(runs[0].metrics.get("n_parameters", 0)),
                                int(runs[0].metrics.get("n_parameters_total", runs[0].metrics.get("n_parameters", 0))),
                                by_hardware))
    return costs


@dataclass
class AlphaGroup:
    """A (dataset, fraction, method, alpha) of a partial-annotation sweep over its runs: draws and training seeds.

    SMILE's outcome at one alpha depends on the training seed as much as on the split (results/README.md,
    "Partially annotated organs"), so a cell is a distribution: every run counts once, whatever its draw and seed,
    and ``dice`` is the mean ± SD over runs with their range beside it."""
    dataset: str
    fraction: float
    method: str  # the method folder without its alpha and training-seed tags
    alpha: float
    classes: List[str]
    draws: int
    seeds: int  # training seeds per draw (the most of any draw)
    dice: Estimate  # over runs
    dice_range: Tuple[float, float]  # the lowest and highest run
    class_dice: Dict[str, Estimate]  # over runs
    # over the runs that scored it: the share of a structure's voxels predicted as another structure (the merge)
    confusion: Optional[Estimate]
    vs_full: Optional[PairedTest]  # against supervised at alpha 0 (every annotation), same fraction, draw and seed


def summarize_alpha(runs: List[Run]) -> List[AlphaGroup]:
    """Partial-annotation runs grouped by (dataset, fraction, method without its alpha and seed tags, alpha)."""
    by_key: Dict[Tuple[str, float, str, float], List[Run]] = {}
    for run in runs:
        line = alpha_line(run)
        if line is not None:
            by_key.setdefault((run.dataset, run.fraction, line, run.alpha), []).append(run)
    groups = []
    for (dataset, fraction, line, alpha), members in sorted(by_key.items()):
        classes, full = members[0].metrics["classes"], by_key.get((dataset, fraction, REFERENCE_METHOD, 0.0))
        dice = [r.result("last")["dice_mean"] for r in members]
        draws = {r.draw for r in members}
        groups.append(AlphaGroup(dataset, fraction, line, alpha, classes, draws=len(draws),
                                 seeds=max(len({r.seed for r in members if r.draw == d}) for d in draws),
                                 dice=estimate(dice), dice_range=(min(dice), max(dice)),
                                 class_dice={c: estimate(r.result("last")[f"dice_{c}"] for r in members)
                                             for c in classes},
                                 confusion=_over_runs_where_scored(members, "confusion_mean"),
                                 vs_full=paired_test(members, full) if full and full is not members else None))
    return groups


def _over_runs_where_scored(runs: List[Run], metric: str) -> Optional[Estimate]:
    """The estimate over runs of the last checkpoint's ``metric``, over the runs whose results have it."""
    scored = [r.result("last")[metric] for r in runs if metric in r.result("last")]
    return estimate(scored) if scored else None


def alpha_reference(groups: List[AlphaGroup], dataset: str, fraction: float) -> Optional[AlphaGroup]:
    """The naive baseline with every annotation: supervised at alpha 0."""
    return next((g for g in groups if (g.dataset, g.fraction, g.method, g.alpha)
                 == (dataset, fraction, REFERENCE_METHOD, 0.0)), None)
