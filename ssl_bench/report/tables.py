"""summary.csv (one row per run) and summary.md (the tables a reader acts on) from a Summary."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

from ssl_bench.config import PROJECT_ROOT
from ssl_bench.report.coverage import NOT_RUN, SweepCoverage
from ssl_bench.report.groups import CHECKPOINTS, TEST_SELECTED, AlphaGroup, Group, alpha_reference
from ssl_bench.report.noise_floor import TARGET_EFFECT, NoiseFloor, ReplicateSet, floor_of
from ssl_bench.report.numeric_settings import SettingComparison
from ssl_bench.report.runs import REFERENCE_METHOD, Run
from ssl_bench.report.stats import (ALPHA, CONFIDENCE, POWER, Estimate, PairedTest, detection_multiplier,
                                    minimum_detectable_effect)
from ssl_bench.report.summary import Summary
from ssl_bench.run.evaluation import STRUCTURE_METRICS, TEST_METRICS

# Marks of a comparison in the tables (explained under each table that uses them).
CROSS_HARDWARE = "†"
PROTOCOL_DIFFERS = "‡"
WITHIN_NOISE = "°"


# ----------------------------------------------------------------------------------------------- summary.csv

def _metric_keys(classes: List[str], result: dict) -> List[str]:
    """The summary.csv keys of a result: Dice and HD95, and Jaccard, ASD and confusion where it was scored with
    them."""
    metrics = [m for m in TEST_METRICS + STRUCTURE_METRICS if m in ("dice", "hd95") or f"{m}_mean" in result]
    return [f"{metric}_{name}" for metric in metrics for name in [*classes, "mean"]]


def summary_row(run: Run) -> dict:
    """The run's row of summary.csv, every number as metrics.json has it: the results of the primary model (last,
    best on validation and, when the run has it, best on test), where it ran, then every other scalar of
    metrics.json (cost: seconds per step, wall time, peak memory, parameters...)."""
    m = run.metrics
    row = {"dataset": m["dataset"], "method": run.method, "fraction": run.fraction, "draw": m["draw"],
           "seed": run.seed, "primary_model": m["primary"]["model"], "run_dir": str(run.folder)}
    for checkpoint in CHECKPOINTS + (TEST_SELECTED,):
        if checkpoint in CHECKPOINTS or run.has_checkpoint(checkpoint):
            result = run.result(checkpoint)
            row.update({f"{checkpoint}_{key}": result.get(key) for key in _metric_keys(m["classes"], result)})
    provenance = run.provenance
    row.update({"hardware": provenance.hardware, "commit": provenance.commit or "", "torch": provenance.torch or "",
                "precision": provenance.precision or ""})
    row.update({k: v for k, v in m.items() if k not in row and isinstance(v, (int, float, str))})
    return row


def csv_text(rows: List[dict]) -> str:
    fields = list(dict.fromkeys(k for row in rows for k in row))  # runs of several datasets: union of columns
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- formatting

def mean_std(e: Optional[Estimate], digits: int = 3) -> str:
    if e is None or e.n == 0:
        return "—"
    return f"{e.mean:.{digits}f}" if e.n < 2 else f"{e.mean:.{digits}f} ± {e.std:.{digits}f}"


def interval(e: Estimate) -> str:
    return f"n={e.n}, no interval" if e.n < 2 else f"[{e.low:.3f}, {e.high:.3f}]"


def versus(test: Optional[PairedTest]) -> str:
    if test is None:
        return "—"
    return f"{test.median_difference:+.3f}, p={test.p_value:.3g} ({test.n_pairs} pairs)"


def parameters(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def percent(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction * 100 == round(fraction * 100) else f"{fraction:.1%}"


def _row(cells: List[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(cells: List[str]) -> List[str]:
    return [_row(cells), "|" + "---|" * len(cells)]


def _hardware_pair(run_hardware: str, reference_hardware: str) -> str:
    return run_hardware if run_hardware == reference_hardware else f"{run_hardware} vs {reference_hardware}"


# ----------------------------------------------------------------------------------------------- headline

def group_detectable_effect(g: Group, floors: List[NoiseFloor]) -> float:
    """The smallest effect the group's own run pairs can detect, with its fraction's noise (NaN when unknown)."""
    floor = floor_of(floors, g.dataset, g.fraction)
    if floor is None or not g.pairs:
        return math.nan
    return minimum_detectable_effect(floor.run_std, floor.case_std, floor.n_cases, len(g.pairs))


def headline_cell(g: Group, floors: List[NoiseFloor], usual_draws: int) -> str:
    """Dice mean ± SD over draws, then the mean per-case difference from supervised and the pooled p, marked."""
    text = mean_std(g.dice)
    if g.dice.n != usual_draws:
        text += f" [{g.dice.n} draw{'s' if g.dice.n != 1 else ''}]"
    test = g.vs_reference
    if test is not None:
        detectable = group_detectable_effect(g, floors)
        marks = "".join(mark for mark, on in ((CROSS_HARDWARE, bool(g.cross_hardware_pairs)),
                                              (PROTOCOL_DIFFERS, bool(g.protocol_differences)),
                                              (WITHIN_NOISE, not math.isnan(detectable)
                                               and abs(test.mean_difference) < detectable)) if on)
        text += f" ({test.mean_difference:+.3f}, p={test.p_value:.2g}){marks}"
    return text


def step_cost_cell(summary: Summary, dataset: str, method: str) -> str:
    cost = summary.cost(dataset, method)
    relative = cost.relative_step_cost() if cost else None
    if relative is None:
        return "—"
    ratio, hardware = relative
    return f"{ratio:.1f}×" + (f" (on {hardware})" if hardware != summary.usual_hardware(dataset) else "")


def amount_label(groups: List[Group], fraction: float) -> str:
    """A column's labeled amount: "4 labeled (5.6%)" where every run at ``fraction`` asked for that number of
    labeled patients (data.n_labeled, as the Left Atrium papers count them), else "5% labels"."""
    asked = {r.metrics.get("n_labeled_patients_asked") for g in groups if g.fraction == fraction for r in g.runs}
    if len(asked) == 1 and None not in asked:
        return f"{asked.pop()} labeled ({percent(fraction)})"
    return f"{percent(fraction)} labels"


def _comparison_table(summary: Summary, dataset: str, groups: List[Group], with_reference: bool) -> List[str]:
    fractions = sorted({g.fraction for g in groups})
    draws = Counter(g.dice.n for g in groups).most_common(1)[0][0]
    by_method: Dict[str, Dict[float, Group]] = {}
    for g in groups:
        by_method.setdefault(g.method, {})[g.fraction] = g
    order = sorted(by_method, key=lambda m: (m != REFERENCE_METHOD, m))
    header = ["method", *(amount_label(groups, f) for f in fractions), "s/step ÷ supervised", "trained parameters"]
    if with_reference:
        header.insert(1, "compared with")
    lines = _header(header)
    for method in order:
        cells = by_method[method]
        first = next(iter(cells.values()))
        row = [method, *(headline_cell(cells[f], summary.noise_floors, draws) if f in cells else "—" for f in fractions),
               step_cost_cell(summary, dataset, method), parameters(int(first.runs[0].metrics.get("n_parameters", 0)))]
        if with_reference:
            row.insert(1, first.reference_method if first.reference_method != method else "—")
        lines.append(_row(row))
    return lines


def _marks_legend(groups: List[Group], draws: int) -> str:
    notes = [f"Dice: test Dice (mean over classes, last checkpoint), mean ± SD over {draws} split "
             f"draw{'s' if draws != 1 else ''} unless marked "
             "(a draw with several replicates counts once, at their mean); in brackets: the mean per-case difference "
             f"from the reference and the pooled paired Wilcoxon p over every (run pair, test case)"]
    if any(g.cross_hardware_pairs for g in groups):
        notes.append(f"{CROSS_HARDWARE}: some run pairs ran on different hardware (see \"Per run pair\")")
    if any(g.protocol_differences for g in groups):
        notes.append(f"{PROTOCOL_DIFFERS}: not like for like, protocol settings differ (listed below the full table)")
    notes.append(f"{WITHIN_NOISE}: the difference is smaller than the smallest effect this comparison's run pairs "
                 "can detect (\"Noise floor\")")
    notes.append("s/step ÷ supervised: median seconds per training step over supervised's, runs on the same hardware "
                 "(`make perf` measures it on an idle machine)")
    return "; ".join(notes) + "."


def headline_markdown(summary: Summary, dataset: str) -> List[str]:
    groups = [g for g in summary.fraction_groups() if g.dataset == dataset]
    methods = [g for g in groups if not g.is_variant]
    variants = [g for g in groups if g.is_variant]
    lines = []
    if methods:
        draws = Counter(g.dice.n for g in methods).most_common(1)[0][0]
        lines += ["", "### Methods", "", _marks_legend(methods, draws), "",
                  *_comparison_table(summary, dataset, methods, with_reference=False)]
    if variants:
        draws = Counter(g.dice.n for g in variants).most_common(1)[0][0]
        lines += ["", "### Ablations, controls and other settings", "",
                  "Tagged variants (`<method>-<tag>`), each against the supervised runs it is compared with. "
                  + _marks_legend(variants, draws), "",
                  *_comparison_table(summary, dataset, variants, with_reference=True)]
    return lines


# ----------------------------------------------------------------------------------------------- detail

def cost_markdown(summary: Summary, dataset: str) -> List[str]:
    costs = [c for c in summary.costs if c.dataset == dataset]
    if not costs:
        return []
    lines = ["", "### Cost", "",
             "Median seconds per training step of the recorded runs per hardware (a method's own first stage, such as "
             "contrastive's pretraining, spread over its steps), against `supervised`'s on the same hardware. Recorded "
             "runs shared their machines unevenly (other runs, tests): `make perf` is the clean measurement.", "",
             *_header(["method", "ran on", "runs", "s/step", f"{REFERENCE_METHOD} s/step", "ratio", "trained parameters",
                       "all parameters"])]
    for cost in sorted(costs, key=lambda c: (c.method != REFERENCE_METHOD, c.method)):
        for hardware, (n, ours, theirs) in cost.seconds_per_step.items():
            ratio = "—" if math.isnan(theirs) else f"{ours / theirs:.2f}"
            lines.append(_row([cost.method, hardware, str(n), f"{ours:.3f}", "—" if math.isnan(theirs) else f"{theirs:.3f}",
                               ratio, parameters(cost.n_parameters), parameters(cost.n_parameters_total)]))
    return lines


def full_table_markdown(summary: Summary, dataset: str) -> List[str]:
    members = [g for g in summary.groups if g.dataset == dataset]
    classes = members[0].classes
    audited = any(g.test_selection is not None for g in members)
    surfaces = any(g.jaccard is not None for g in members)  # Jaccard and ASD, where records have them
    header = ["method", "fraction", "draws", "runs", "Dice", f"{CONFIDENCE:.0%} CI", *(f"Dice {c}" for c in classes),
              *(["Jaccard"] if surfaces else []), "HD95", *(["ASD"] if surfaces else []), "Dice best on val", *(["Dice best on test"] if audited else []), f"vs {REFERENCE_METHOD}", "ran on"]
    lines = ["", "### Every method and fraction", "",
             f"Mean ± std over draws; {CONFIDENCE:.0%} CI: t-interval of the mean over draws. \"best on val\": the "
             "checkpoint with the best validation Dice" + ("; \"best on test\": the checkpoint best on the test cases, "
                                                          "as papers that select on the test set report it (over the "
                                                          "runs that have it)" if audited else "")
             + f". \"vs {REFERENCE_METHOD}\": median per-case Dice difference, two-sided paired Wilcoxon signed-rank p "
             "(scipy.stats.wilcoxon) and the number of (run pair, test case) pairs: each run matched with the "
             f"`{REFERENCE_METHOD}` run of the same draw and training seed on the same hardware (across hardware, marked, "
             "only for a draw and seed without a same-hardware pair), pooled over draws, seeds and hardware; a case "
             "counts once per run pair. HD95" + (" and ASD (mean distance from the prediction's surface to the ground "
                                                 "truth's)" if surfaces else "") + " in the data's spacing "
             "(mm where the images carry it).", "", *_header(header)]
    for g in members:
        marks = (CROSS_HARDWARE if g.cross_hardware_pairs else "") + (PROTOCOL_DIFFERS if g.protocol_differences else "")
        cells = [g.method, f"{g.fraction:g}", str(g.dice.n), str(g.n_runs), mean_std(g.dice), interval(g.dice),
                 *(mean_std(g.class_dice[c]) for c in classes), *([mean_std(g.jaccard)] if surfaces else []),
                 mean_std(g.hd95, 2), *([mean_std(g.asd, 2)] if surfaces else []), mean_std(g.best_dice),
                 *([mean_std(g.test_selection.best_on_test if g.test_selection else None)] if audited else []),
                 versus(g.vs_reference) + (f" {marks}" if marks else ""), ", ".join(g.hardware)]
        lines.append(_row(cells))
    unlike = [g for g in members if g.protocol_differences]
    if unlike:
        lines += ["", f"{PROTOCOL_DIFFERS} Not like for like: these runs differ from the `{REFERENCE_METHOD}` runs they "
                  "are compared with in protocol settings, not only in the method's own, so part of the difference may "
                  "come from those settings:", ""]
        lines += [f"- `{g.method}` at {g.fraction:g} vs `{g.reference_method}`: " + "; ".join(g.protocol_differences)
                  for g in unlike]
    crossing = [g for g in members if g.cross_hardware_pairs]
    if crossing:
        lines += ["", f"{CROSS_HARDWARE} Across hardware: some of these run pairs ran on different machines, whose "
                  "results differ by themselves (\"Noise floor\"):", ""]
        lines += [f"- `{g.method}` at {g.fraction:g}: " + "; ".join(
            f"draw {p.draw} seed {p.seed} on {p.run.hardware} vs `{p.reference.method}` on {p.reference.hardware}"
            for p in g.cross_hardware_pairs) for g in crossing]
    return lines


def test_selection_markdown(summary: Summary, dataset: str) -> List[str]:
    audited = [g for g in summary.groups if g.dataset == dataset and g.test_selection is not None]
    if not audited:
        return []
    lines = ["", "### Test-set selection", "",
             "The checkpoint that is best on the TEST cases (evaluated at every validation step and used for nothing "
             "else) is what papers that select on the test set report. \"Test-selection inflation\": its Dice minus "
             "the last checkpoint's, mean ± SD over draws: how much such a number overstates a method. Every column is over "
             "the runs that have the audit.", "",
             *_header(["method", "fraction", "draws", "Dice last", "Dice best on val", "Dice best on test",
                       "test-selection inflation"])]
    for g in audited:
        t = g.test_selection
        lines.append(_row([g.method, f"{g.fraction:g}", str(t.best_on_test.n), mean_std(t.last),
                           mean_std(t.best_on_validation), mean_std(t.best_on_test), _signed(t.inflation)]))
    return lines


def _signed(e: Estimate) -> str:
    return f"{e.mean:+.3f}" if e.n < 2 else f"{e.mean:+.3f} ± {e.std:.3f}"


def pairs_markdown(summary: Summary, dataset: str) -> List[str]:
    compared = [g for g in summary.groups if g.dataset == dataset and g.pairs]
    if not compared:
        return []
    lines = ["", "### Per run pair", "",
             f"Each run against the `{REFERENCE_METHOD}` run of the same draw and seed: mean Dice of both, median "
             "per-case difference, paired Wilcoxon p-value and the test cases where the method is better. A pooled "
             "test can hide a gain on one split and a loss on another.", "",
             *_header(["method", "fraction", "draw", "seed", "ran on", "Dice", REFERENCE_METHOD, "median difference", "p",
                       "cases better"])]
    for g in compared:
        for p in g.pairs:
            lines.append(_row([g.method, f"{g.fraction:g}", str(p.draw), str(p.seed),
                               _hardware_pair(p.run.hardware, p.reference.hardware) + (f" {CROSS_HARDWARE}" if p.crosses_hardware else ""),
                               f"{p.dice:.3f}", f"{p.reference_dice:.3f}", f"{p.test.median_difference:+.3f}",
                               f"{p.test.p_value:.3g}", f"{p.test.n_better}/{p.test.n_pairs}"]))
    return lines


def variants_markdown(summary: Summary, dataset: str) -> List[str]:
    compared = [c for c in summary.variants if c.method.dataset == dataset]
    if not compared:
        return []
    lines = ["", "### Methods against their controls and ablations", "",
             "Each method against its own tagged variants (`<method>-<tag>`: a control such as `cps-lambda_max0.0`, "
             "two networks without cross pseudo-labels, or an ablation), run by run: each method run paired with the "
             "variant run of the same draw and seed. Difference: the method's mean Dice minus the variant's, mean "
             "over draws; then the median per-case difference, the pooled paired Wilcoxon p and the cases where the "
             f"method is better. {CROSS_HARDWARE}: some pairs ran on different hardware.", "",
             *_header(["method", "variant", "fraction", "draws", "Dice", "variant Dice", "difference",
                       "per case", "cases better"])]
    for c in sorted(compared, key=lambda c: (c.method.method, c.variant.method, c.method.fraction)):
        mark = f" {CROSS_HARDWARE}" if any(p.crosses_hardware for p in c.pairs) else ""
        lines.append(_row([c.method.method, c.variant.method, f"{c.method.fraction:.3g}", str(c.difference.n),
                           mean_std(c.method.dice), mean_std(c.variant.dice), f"{c.difference.mean:+.3f}{mark}",
                           versus(c.test), f"{c.test.n_better}/{c.test.n_pairs}" if c.test else "—"]))
    return lines


def settings_markdown(comparisons: List[SettingComparison]) -> List[str]:
    if not comparisons:
        return []
    lines = ["", "### Numeric settings against the protocol's", "",
             "A method's runs in another numeric setting against the same method's runs in the protocol's (not against "
             f"`{REFERENCE_METHOD}`), same draw and seed: the setting's own effect. Difference: mean Dice minus the "
             "protocol run's, over draws; paired test: Wilcoxon over (draw, test case), a draw's replicates averaged "
             "case by case; then each run pair. A faster setting may become a default only where its difference is "
             "within the run-to-run noise (\"Noise floor\").", "",
             *_header(["method", "against", "fraction", "setting", "draws", "difference", "paired test",
                       "cases better"])]
    for c in comparisons:
        better = f"{c.test.n_better}/{c.test.n_pairs}" if c.test else "—"
        lines.append(_row([c.method, c.protocol_method, f"{c.fraction:g}", c.setting, str(c.difference.n),
                           mean_std(c.difference, 4), versus(c.test), better]))
    lines += ["", *_header(["method", "fraction", "draw", "seed", "ran on", "Dice", "protocol's", "median difference",
                            "p", "cases better"])]
    for c in comparisons:
        for p in c.pairs:
            lines.append(_row([c.method, f"{c.fraction:g}", str(p.draw), str(p.seed),
                               _hardware_pair(p.run.hardware, p.reference.hardware), f"{p.dice:.4f}",
                               f"{p.reference_dice:.4f}", f"{p.test.median_difference:+.4f}", f"{p.test.p_value:.3g}",
                               f"{p.test.n_better}/{p.test.n_pairs}"]))
    return lines


def noise_floor_markdown(summary: Summary, dataset: str) -> List[str]:
    floors = [f for f in summary.noise_floors if f.dataset == dataset]
    if not floors:
        return []
    z = detection_multiplier()
    lines = ["", "### Noise floor", "",
             "How far one config moves when trained again, and the smallest difference from `supervised` the runs "
             "at hand can detect. Run-to-run SD: the pooled standard deviation of mean test Dice within replicate sets "
             "(runs of one config and draw that differ only in training seed or hardware, \"Replicates\" below); "
             "per-case SD: the standard deviation over test cases of the per-case difference between a method run and "
             "its reference run, about that pair's mean, pooled over the fraction's comparisons. Smallest detectable "
             f"effect, at a two-sided α = {ALPHA:g} with power {POWER:g} (normal approximation, z sum {z:.2f}), for a "
             "comparison averaging k run pairs of n test cases each: "
             f"{z:.2f} × √((2 × run SD² + per-case SD² / n) / k). \"Per-case test alone\": {z:.2f} × per-case SD / "
             "√(k × n), what the pooled Wilcoxon test, which treats every (run pair, case) as independent, resolves; "
             f"when the first is larger, training noise, not the test cases, limits the benchmark. Last column: run "
             f"pairs per comparison needed to detect a difference of {TARGET_EFFECT:g}.", "",
             *_header(["fraction", "replicate sets (runs)", "run-to-run SD", "per-case SD", "cases n",
                       "run pairs k", "smallest detectable effect", "per-case test alone",
                       f"run pairs for {TARGET_EFFECT:g}"])]
    for f in floors:
        runs = sum(len(s.replicates) for s in f.replicate_sets)
        run_std = "—" if math.isnan(f.run_std) else f"{f.run_std:.4f}" + (
            "" if f.run_std_source == "this fraction" else f" (from {f.run_std_source})")
        lines.append(_row([f"{f.fraction:g}", f"{len(f.replicate_sets)} ({runs})", run_std, _number(f.case_std, 4),
                           str(f.n_cases or "—"), str(f.n_run_pairs or "—"), _number(f.detectable_effect, 4),
                           _number(f.case_level_effect, 4), str(f.run_pairs_for_target or "—")]))
    if all(f.run_std_source == "none" for f in floors):
        lines += ["", "No replicates yet, so no run-to-run spread: run a cell again with another training seed (a "
                  "`trainer.seed` axis in a sweep, e.g. experiments/sweeps/training_seed.yaml) or on other hardware."]
    return lines


def _number(x: float, digits: int) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def replicates_markdown(sets: List[ReplicateSet]) -> List[str]:
    if not sets:
        return []
    lines = ["", "### Replicates", "",
             "Runs of one method, fraction and draw that differ only in `trainer.seed` (initialisation, sampling and "
             "augmentation) or in the hardware they ran on: the same split and settings trained again. Each replicate "
             "against the set's first run: median per-case Dice difference, paired Wilcoxon p-value, test cases "
             "better. A method's gain over `supervised` within this spread may be training noise.", "",
             *_header(["dataset", "method", "fraction", "draw", "run", "seed", "ran on", "Dice", "vs first",
                       "cases better"])]
    for s in sets:
        for r in s.replicates:
            better = f"{r.vs_first.n_better}/{r.vs_first.n_pairs}" if r.vs_first else "—"
            lines.append(_row([s.dataset, s.method, f"{s.fraction:g}", str(s.draw), r.method, str(r.seed), r.hardware,
                               f"{r.dice:.4f}", versus(r.vs_first) if r.vs_first else "first", better]))
    lines += [""] + [f"- {s.method} at {s.fraction:g}, draw {s.draw} ({s.dataset}; {s.varies} varies): "
                     f"{len(s.replicates)} runs, Dice {mean_std(s.dice, 4)}, range {s.spread:.4f}" for s in sets]
    return lines


def provenance_markdown(summary: Summary) -> List[str]:
    environments: Dict[str, List[Run]] = {}
    for run in summary.runs:
        environments.setdefault(run.provenance.describe(), []).append(run)
    if not environments:
        return []
    largest = max(environments, key=lambda e: len(environments[e]))
    lines = ["", "## Where the runs ran", "",
             "From each run's metrics.json (`provenance`: commit, device, library versions, precision, threads).", "",
             *_header(["environment", "runs", "cells"])]
    for environment, runs in sorted(environments.items(), key=lambda kv: -len(kv[1])):
        cells = ("every other run" if environment == largest and len(environments) > 1 else
                 ", ".join(f"{r.method} {r.fraction:g} d{r.draw}" for r in runs))
        lines.append(_row([environment, str(len(runs)), cells]))
    return lines


def alpha_markdown(groups: List[AlphaGroup]) -> List[str]:
    lines = []
    for dataset, fraction in dict.fromkeys((g.dataset, g.fraction) for g in groups):
        members = sorted((g for g in groups if (g.dataset, g.fraction) == (dataset, fraction)),
                         key=lambda g: (g.alpha, g.method != REFERENCE_METHOD, g.method))
        classes, reference = members[0].classes, alpha_reference(groups, dataset, fraction)
        versus_label = f"vs {REFERENCE_METHOD} at alpha 0"
        confused = any(g.confusion for g in members)
        lines += ["", f"## {dataset}: partial annotations (fraction {fraction:g})", "",
                  "Each structure's annotation removed from alpha of the training cases (`data.partial.alpha`); "
                  f"`{REFERENCE_METHOD}` is the naive baseline (a removed structure is background). Dice: test Dice "
                  "of the last checkpoint, mean ± SD over the runs (split draws × training seeds: at one alpha a "
                  "method's outcome can depend on the seed), then the lowest and highest run. "
                  f"\"{versus_label}\": difference of mean test Dice from the naive baseline with every annotation, "
                  "then the median per-case difference and the paired Wilcoxon p-value against it (runs paired by "
                  "draw and seed)." + (" Confusion: the share of a structure's voxels predicted as another "
                                       "structure, mean over structures (two structures merged into one)."
                                       if confused else ""), "",
                  *_header(["alpha", "method", "runs (draws × seeds)", "Dice", "lowest – highest run",
                            *(f"Dice {c}" for c in classes), *(["confusion"] if confused else []), versus_label])]
        for g in members:
            delta = f"{g.dice.mean - reference.dice.mean:+.3f}" if reference else "—"
            if g.vs_full:
                delta += f" ({versus(g.vs_full)})"
            lines.append(_row([f"{g.alpha:g}", g.method, f"{g.dice.n} ({g.draws} × {g.seeds})", mean_std(g.dice),
                               f"{g.dice_range[0]:.3f} – {g.dice_range[1]:.3f}",
                               *(mean_std(g.class_dice[c]) for c in classes),
                               *([mean_std(g.confusion)] if confused else []), delta]))
    return lines


def coverage_markdown(coverage: List[SweepCoverage]) -> List[str]:
    if not coverage:
        return []
    lines = ["", "## Missing cells", "",
             "Cells of the sweeps these runs belong to (`logging.tags: [sweep=<name>]`) that neither a run folder nor "
             "a record holds, per the sweep files as they are now.", ""]
    for sweep in coverage:
        if sweep.problem:
            lines.append(f"- `{sweep.name}`: {sweep.problem}")
            continue
        if not sweep.missing:
            lines.append(f"- `{sweep.name}` ({_shown_path(sweep.source)}): all {sweep.n_cells} cells have a result")
            continue
        lines.append(f"- `{sweep.name}` ({_shown_path(sweep.source)}): {len(sweep.missing)} of {sweep.n_cells} cells have no result:")
        by_method: Dict[str, Dict[str, List[str]]] = {}
        for cell in sweep.missing:
            draw = str(cell.draw) + ("" if cell.state == NOT_RUN else f" ({cell.state})")
            by_method.setdefault(cell.relative_dir.parts[1], {}).setdefault(cell.labeled, []).append(draw)
        for method, fractions in by_method.items():
            lines.append(f"  - {method}: " + "; ".join(
                f"{labeled} draw{'s' if len(draws) > 1 else ''} {', '.join(draws)}"
                for labeled, draws in sorted(fractions.items())))
    return lines


def _shown_path(path: Path) -> str:
    """A path inside the project relative to it (the same in every checkout), others as given."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def skipped_markdown(summary: Summary) -> List[str]:
    if not summary.loaded.skipped:
        return []
    return ["", "## Left out", "", "Files that do not parse; their runs are not in any table:", "",
            *(f"- {s.describe()}" for s in summary.loaded.skipped)]


def sources_line(summary: Summary) -> str:
    loaded = summary.loaded
    n_records = sum(loaded.is_record(r) for r in loaded.runs)
    text = f"{len(loaded.runs)} finished runs: {len(loaded.runs) - n_records} under `{loaded.runs_dir}`"
    if loaded.records_dir is not None:
        text += f", {n_records} from records in `{loaded.records_dir}` (run folders no longer on this disk)"
    if loaded.skipped:
        text += f"; {len(loaded.skipped)} left out (files that do not parse, listed at the end)"
    return text


def markdown(summary: Summary) -> str:
    lines = ["# ssl-bench results", "",
             f"{sources_line(summary)}. Primary result: the last checkpoint of each method's primary model, evaluated "
             "on the test cases."]
    for dataset in summary.datasets():
        lines += ["", f"## {dataset}"]
        lines += headline_markdown(summary, dataset)
        lines += cost_markdown(summary, dataset)
        lines += full_table_markdown(summary, dataset)
        lines += test_selection_markdown(summary, dataset)
        lines += pairs_markdown(summary, dataset)
        lines += variants_markdown(summary, dataset)
        lines += settings_markdown([c for c in summary.settings if c.dataset == dataset])
        lines += noise_floor_markdown(summary, dataset)
        lines += replicates_markdown([s for s in summary.replicate_sets if s.dataset == dataset])
    lines += alpha_markdown(summary.alpha_groups)
    lines += provenance_markdown(summary)
    lines += coverage_markdown(summary.coverage)
    lines += skipped_markdown(summary)
    return "\n".join(lines) + "\n"


def group_record(g: Group) -> dict:
    """A group as a flat record (the W&B summary table)."""
    test = g.vs_reference
    return {"dataset": g.dataset, "method": g.method, "fraction": g.fraction, "draws": g.dice.n, "runs": g.n_runs,
            "dice_mean": g.dice.mean, "dice_std": g.dice.std, "dice_ci_low": g.dice.low, "dice_ci_high": g.dice.high,
            "hd95_mean": g.hd95.mean, "best_dice_mean": g.best_dice.mean,
            "test_best_dice_mean": g.test_selection.best_on_test.mean if g.test_selection else None,
            "test_selection_inflation": g.test_selection.inflation.mean if g.test_selection else None,
            "reference": g.reference_method, "protocol_differences": "; ".join(g.protocol_differences),
            "hardware": ", ".join(g.hardware), "cross_hardware_pairs": len(g.cross_hardware_pairs),
            **{f"vs_{REFERENCE_METHOD}_{k}": v for k, v in (asdict(test) if test else {}).items()}}
