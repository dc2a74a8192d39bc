"""Results: one table built from every finished run folder, its summary over draws, paired tests and a plot.

``ssl-bench report [runs_dir] --out results`` reads every ``metrics.json`` under ``runs_dir`` (a run is
finished exactly when it has one) and its ``per_case.csv``; there is no other state. It writes

- ``summary.csv``: one row per run (dataset, method, fraction, draw, then for the last and the
  best-on-validation checkpoints of the primary model Dice and HD95 per class and their means, then
  cost: seconds per step, wall time, peak memory, parameters);
- ``summary.md``: per dataset, method and fraction, mean ± std over draws with a 95% t-interval, and a
  paired Wilcoxon signed-rank test against ``supervised`` at the same fraction;
- ``dice_vs_fraction.png``: Dice against labeled fraction, one line per method, error bars over draws,
  supervised at 100% labels as a horizontal reference;
- for partial-annotation runs (a sweep axis on ``data.partial.alpha``, folders ``<method>-alpha<a>``), a
  section of ``summary.md`` with Dice per class against alpha, and ``dice_vs_alpha.png``: one panel per
  class and their mean, one line per method, the naive baseline (supervised) at alpha 0 as a reference;

and logs the tables and the chart to a W&B run named ``summary`` (offline unless WANDB_MODE says otherwise).

Records: run folders (checkpoints, logs) rarely outlive the machine that trained them, so the report keeps a
copy of each run's three small result files (metrics.json, per_case.csv, config.yaml) under ``<out>/records/``
in the run's own layout, and reads them back next time. A run folder still on disk always wins over its
record (the record is rewritten from it); a record stands in for a run folder that is gone, so a results table
grows across machines and sessions instead of shrinking to what one disk still holds. Delete a record to drop
the run from the report.

The method of a run is its method folder, ``<method>[-<tag>]`` (runs/<dataset>/<method>[-<tag>]/frac<f>/
draw<d>/), so variants such as an extra sweep axis are reported apart, and each is compared with the
supervised run of the same tag (or, for a variant of a method-only setting, the untagged supervised run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from omegaconf import OmegaConf

from ssl_bench.config import EXECUTION_KEYS, differing_keys, flatten_keys
from ssl_bench.utils.io import atomic_write_bytes, atomic_write_text

METRICS_FILE = "metrics.json"
PER_CASE_FILE = "per_case.csv"
CONFIG_FILE = "config.yaml"
RECORDS_DIR = "records"
# Written in this order: metrics.json, which marks a run (and a record) finished, last.
RECORD_FILES = (PER_CASE_FILE, CONFIG_FILE, METRICS_FILE)
REFERENCE_METHOD = "supervised"
FULL_FRACTION = 1.0
CONFIDENCE = 0.95
CHECKPOINTS = ("last", "best")
# Inches per dataset panel of the plot.
PANEL_SIZE = (6.0, 4.5)
LINE_MARKERS = ("o", "s", "^", "D", "v")
# Panels per row of the Dice-vs-alpha plot (the mean, then one per class, wrapped).
ALPHA_PANELS_PER_ROW = 3


class ReportError(ValueError):
    """Nothing to report, or a run folder that cannot be read; the message names the path."""


@dataclass
class Run:
    """One finished run: its metrics.json and the per-case Dice (mean over classes) of its primary result."""
    method: str  # the method folder: <method>[-<tag>]
    metrics: dict
    case_dice: Dict[str, float]
    folder: Path
    alpha: float = 0.0  # data.partial.alpha: the fraction of training cases each structure's annotation is removed from

    @property
    def key(self) -> Tuple[str, str, float]:
        return self.metrics["dataset"], self.method, float(self.metrics["fraction"])

    @property
    def reference_method(self) -> str:
        """The supervised run of the same tag, e.g. mean_teacher-lr0.001 -> supervised-lr0.001."""
        return REFERENCE_METHOD + self.method[len(self.metrics["method"]):]

    def config(self) -> dict:
        """The run's config.yaml as flat dotted keys ({} when the folder has none)."""
        path = self.folder / CONFIG_FILE
        return flatten_keys(OmegaConf.to_container(OmegaConf.load(path))) if path.is_file() else {}

    def result(self, checkpoint: str) -> dict:
        """metrics.json's summary of the primary model at ``checkpoint`` (last or best)."""
        return self.metrics["results"][checkpoint][self.metrics["primary"]["model"]]


@dataclass
class Estimate:
    """Mean over draws, sample std and the t-interval of the mean (NaN with fewer than two draws)."""
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


@dataclass
class DrawComparison:
    """One draw of a group against the reference run of the same draw."""
    draw: int
    dice: float
    reference_dice: float
    test: PairedTest


@dataclass
class Group:
    """A (dataset, method, fraction) over its draws."""
    dataset: str
    method: str
    fraction: float
    reference_method: str
    classes: List[str]
    dice: Estimate
    class_dice: Dict[str, Estimate]
    hd95: Estimate
    best_dice: Estimate
    vs_reference: Optional[PairedTest]
    # Protocol settings (config keys other than the method's own, the tag, the draw and execution) in which the
    # group's runs differ from the reference runs they are compared with, e.g. "model.dropout: 0.1 vs 0.0".
    protocol_differences: List[str] = field(default_factory=list)
    per_draw: List[DrawComparison] = field(default_factory=list)


@dataclass
class AlphaGroup:
    """A (dataset, fraction, method, alpha) of a partial-annotation sweep over its draws."""
    dataset: str
    fraction: float
    method: str  # the method folder without its alpha tag
    alpha: float
    classes: List[str]
    dice: Estimate
    class_dice: Dict[str, Estimate]
    vs_full: Optional[PairedTest]  # against supervised at alpha 0 (every annotation), same fraction


@dataclass
class Replicate:
    """One run of a set of training-seed replicates, against the set's first run."""
    method: str  # the method folder, e.g. supervised-seed100
    seed: int  # trainer.seed, or the draw when it is unset (run_seed)
    dice: float
    vs_first: Optional[PairedTest]  # None for the first run itself


@dataclass
class ReplicateSet:
    """Runs of one method, fraction and draw whose configs differ only in trainer.seed: the same split and
    settings trained again, which measures the run-to-run noise a method comparison has to beat."""
    dataset: str
    method: str  # metrics.json's method (without a tag)
    fraction: float
    draw: int
    replicates: List[Replicate]
    dice: Estimate  # over the replicates


def _partial_alpha(metrics: dict, folder: Path) -> float:
    """metrics.json's partial_alpha; runs written before it was recorded have it in their config.yaml."""
    if "partial_alpha" in metrics:
        return float(metrics["partial_alpha"])
    config = folder / CONFIG_FILE
    if not config.is_file():
        return 0.0
    return float(OmegaConf.select(OmegaConf.load(config), "data.partial.alpha", default=0.0))


def alpha_line(run: Run) -> Optional[str]:
    """The method folder without its ``alpha<a>`` tag (a sweep axis on data.partial.alpha), e.g.
    smile-alpha0.5 -> smile; None for a run that is not part of such a sweep."""
    parts = run.method.split("-")
    kept = [p for p in parts if not (re.fullmatch(r"alpha[0-9.]+", p) and float(p[len("alpha"):]) == run.alpha)]
    return "-".join(kept) if len(kept) < len(parts) else None


def load_runs(runs_dir: Path, records_dir: Optional[Path] = None) -> List[Run]:
    """Every finished run under ``runs_dir``, plus the records under ``records_dir`` whose run folder (same
    relative path) is not under ``runs_dir``."""
    runs = [r for r in _read_runs(Path(runs_dir))  # records kept inside runs_dir are not run folders
            if records_dir is None or not r.folder.resolve().is_relative_to(Path(records_dir).resolve())]
    if records_dir is not None:
        on_disk = {r.folder.relative_to(runs_dir) for r in runs}
        runs += [r for r in _read_runs(Path(records_dir)) if r.folder.relative_to(records_dir) not in on_disk]
    if not runs:
        where = f"{runs_dir}" + (f" or {records_dir}" if records_dir is not None else "")
        raise ReportError(f"no finished runs (no {METRICS_FILE}) under {where}")
    return sorted(runs, key=lambda r: (*r.key, r.metrics["draw"]))


def write_records(runs: List[Run], runs_dir: Path, records_dir: Path) -> None:
    """Copies the result files of every run under ``runs_dir`` to ``records_dir`` (same relative path),
    replacing older records."""
    for run in runs:
        if not run.folder.is_relative_to(runs_dir) or run.folder.resolve().is_relative_to(records_dir.resolve()):
            continue  # a record already (records_dir may lie inside runs_dir)
        keep_record(run.folder, records_dir / run.folder.relative_to(runs_dir))


def keep_record(run_folder: Path, record_folder: Path) -> None:
    """Copies a finished run's result files to ``record_folder``, replacing any older record there. The old
    metrics.json (which makes a folder a record) goes first and the new one comes last, each file is written
    atomically and a stale file the run lacks is removed: a kill midway leaves no record mixing two runs."""
    (record_folder / METRICS_FILE).unlink(missing_ok=True)
    for name in RECORD_FILES:
        source, target = run_folder / name, record_folder / name
        if source.is_file():
            atomic_write_bytes(target, source.read_bytes())
        elif target.is_file():
            target.unlink()


def _read_runs(root: Path) -> List[Run]:
    runs = []
    for path in sorted(root.rglob(METRICS_FILE)):
        folder = path.parent
        metrics = json.loads(path.read_text())
        per_case = folder / PER_CASE_FILE
        if not per_case.is_file():
            raise ReportError(f"{folder} has {METRICS_FILE} but no {PER_CASE_FILE}")
        primary = metrics["primary"]
        with open(per_case, newline="") as f:
            case_dice = {r["case_id"]: float(r["dice_mean"]) for r in csv.DictReader(f)
                         if r["checkpoint"] == primary["checkpoint"] and r["model"] == primary["model"]}
        runs.append(Run(folder.parents[1].name, metrics, case_dice, folder, _partial_alpha(metrics, folder)))
    return runs


def _metric_keys(classes: List[str]) -> List[str]:
    return [f"{metric}_{name}" for metric in ("dice", "hd95") for name in [*classes, "mean"]]


def summary_row(run: Run) -> dict:
    """The run's row of summary.csv, every number as metrics.json has it: the results of the primary model,
    then every other scalar of metrics.json (cost: seconds per step, wall time, peak memory, parameters...)."""
    m = run.metrics
    row = {"dataset": m["dataset"], "method": run.method, "fraction": m["fraction"], "draw": m["draw"],
           "primary_model": m["primary"]["model"], "run_dir": str(run.folder)}
    for checkpoint in CHECKPOINTS:
        row.update({f"{checkpoint}_{key}": run.result(checkpoint)[key] for key in _metric_keys(m["classes"])})
    row.update({k: v for k, v in m.items() if k not in row and isinstance(v, (int, float, str))})
    return row


def estimate(values: Iterable[float]) -> Estimate:
    from scipy import stats
    x = np.asarray(list(values), dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return Estimate(len(x), mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return Estimate(len(x), mean, std, mean - half, mean + half)


def paired_test(runs: List[Run], references: List[Run]) -> Optional[PairedTest]:
    """Wilcoxon signed-rank (two-sided) of per-case Dice against the reference's.

    Pairs are (draw, test case): a run is matched with the reference run of the same draw, cases by
    case_id, pooled over the draws both have (cases with NaN on either side dropped). A case therefore
    counts once per draw; the draws share the test cases, so these pairs are not fully independent.
    """
    from scipy.stats import wilcoxon
    reference_by_draw = {r.metrics["draw"]: r for r in references}
    ours, theirs = [], []
    for run in runs:
        reference = reference_by_draw.get(run.metrics["draw"])
        for case_id, value in run.case_dice.items():
            other = reference.case_dice.get(case_id, math.nan) if reference else math.nan
            if not (math.isnan(value) or math.isnan(other)):
                ours.append(value)
                theirs.append(other)
    if not ours:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical vectors: scipy warns, p = 1
        p_value = float(wilcoxon(ours, theirs).pvalue)
    differences = np.subtract(ours, theirs)
    return PairedTest(len(ours), float(np.median(differences)), p_value, int((differences > 0).sum()))


def per_draw_comparisons(runs: List[Run], references: List[Run]) -> List[DrawComparison]:
    """Each run against the reference run of its draw (paired_test on that draw alone), in draw order: the
    pooled test can hide a gain on one split and a loss on another."""
    reference_by_draw = {r.metrics["draw"]: r for r in references}
    out = []
    for run in sorted(runs, key=lambda r: r.metrics["draw"]):
        reference = reference_by_draw.get(run.metrics["draw"])
        test = paired_test([run], [reference]) if reference else None
        if test is not None:
            out.append(DrawComparison(run.metrics["draw"], run.result("last")["dice_mean"],
                                      reference.result("last")["dice_mean"], test))
    return out


# Config keys that may differ between a method variant and the supervised run it is compared with.
_VARIANT_KEYS = ("method.", "run.", "data.draw", *EXECUTION_KEYS)


def _method_keys(run: Run) -> Tuple[str, ...]:
    """The config keys that belong to ``run``'s method (its own settings, tag, draw, execution)."""
    # A method's own first stage (contrastive's pretraining, recorded in metrics.json) sets the initialisation.
    return _VARIANT_KEYS + (("model.init_from",) if "pretrain_run_dir" in run.metrics else ())


def differs_only_in_method(run: Run, reference: Run) -> bool:
    """Whether two runs' configs differ only in method settings (and tag, draw, execution): the same data,
    network, optimizer and budget. False when either has no config.yaml."""
    ours, theirs = run.config(), reference.config()
    return bool(ours and theirs) and not differing_keys(ours, theirs, ignore=_method_keys(run))


def protocol_differences(run: Run, reference: Run) -> List[str]:
    """"key: ours vs theirs" for each protocol setting in which ``run`` differs from its reference: a comparison that
    is not like for like (co_training's dropout, say) is shown as such. Empty when either has no config.yaml."""
    ours, theirs = run.config(), reference.config()
    if not (ours and theirs):
        return []
    return [f"{k}: {ours.get(k)} vs {theirs.get(k)}" for k in differing_keys(ours, theirs, ignore=_method_keys(run))]


def reference_of(members: List[Run], by_key: Dict[Tuple[str, str, float], List[Run]]) -> str:
    """The supervised runs a group is compared with: those of its tag; for a variant on a method-only
    hyperparameter (e.g. mean_teacher-lambda_max1.0, a sweep axis on method.lambda_max), which has no supervised
    run of its own tag, the untagged supervised runs, once their configs show nothing else differs."""
    run = members[0]
    dataset, _, fraction = run.key
    tagged = run.reference_method
    plain = by_key.get((dataset, REFERENCE_METHOD, fraction))
    if (dataset, tagged, fraction) not in by_key and plain and differs_only_in_method(run, plain[0]):
        return REFERENCE_METHOD
    return tagged


def summarize_groups(runs: List[Run]) -> List[Group]:
    by_key: Dict[Tuple[str, str, float], List[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    groups = []
    for (dataset, method, fraction), members in by_key.items():
        classes, reference = members[0].metrics["classes"], reference_of(members, by_key)
        comparable = method != reference and (dataset, reference, fraction) in by_key
        references = by_key.get((dataset, reference, fraction), [])
        last = [r.result("last") for r in members]
        groups.append(Group(
            dataset, method, fraction, reference, classes,
            dice=estimate(r["dice_mean"] for r in last),
            class_dice={c: estimate(r[f"dice_{c}"] for r in last) for c in classes},
            hd95=estimate(r["hd95_mean"] for r in last),
            best_dice=estimate(r.result("best")["dice_mean"] for r in members),
            vs_reference=paired_test(members, references) if comparable else None,
            protocol_differences=protocol_differences(members[0], references[0]) if comparable else [],
            per_draw=per_draw_comparisons(members, references) if comparable else []))
    return groups


# Config keys in which training-seed replicates may differ.
_REPLICATE_KEYS = ("trainer.seed", "run.", *EXECUTION_KEYS)


def _effective_seed(run: Run, config: dict) -> int:
    """ssl_bench.config.run_seed of a run: trainer.seed, or the draw when unset."""
    seed = config.get("trainer.seed")
    return int(seed if seed is not None else run.metrics["draw"])


def summarize_replicates(runs: List[Run]) -> List[ReplicateSet]:
    """Sets of runs (two or more) of the same dataset, method, fraction and draw whose configs differ at most in
    the training seed (a repeated seed shows nondeterminism); the untagged run (if any) comes first, then by seed.
    Runs without config.yaml are left out: nothing shows what else they changed."""
    buckets: Dict[Tuple[str, str, float, int], List[Tuple[Run, dict]]] = {}
    for run in runs:
        config = run.config()
        if config:
            m = run.metrics
            buckets.setdefault((m["dataset"], m["method"], float(m["fraction"]), m["draw"]), []).append((run, config))
    sets = []
    for (dataset, method, fraction, draw), members in buckets.items():
        members.sort(key=lambda rc: (rc[0].method != method, _effective_seed(*rc), rc[0].method))
        clusters: List[List[Tuple[Run, dict]]] = []
        for run, config in members:
            home = next((c for c in clusters if not differing_keys(config, c[0][1], ignore=_REPLICATE_KEYS)), None)
            if home is None:
                clusters.append([(run, config)])
            else:
                home.append((run, config))
        for cluster in clusters:
            if len(cluster) < 2:
                continue
            first = cluster[0][0]
            replicates = [Replicate(run.method, _effective_seed(run, config), run.result("last")["dice_mean"],
                                    paired_test([run], [first]) if run is not first else None)
                          for run, config in cluster]
            sets.append(ReplicateSet(dataset, method, fraction, draw, replicates,
                                     estimate(r.dice for r in replicates)))
    return sorted(sets, key=lambda s: (s.dataset, s.fraction, s.method, s.draw))


def replicates_markdown(sets: List[ReplicateSet]) -> str:
    if not sets:
        return ""
    lines = ["", "## Training-seed replicates", "",
             "Runs that differ only in `trainer.seed` (initialisation, sampling and augmentation; same split, same "
             "settings): how much a result moves when the same run is trained again. Each replicate against the "
             "set's first run: median per-case Dice difference, paired Wilcoxon p-value, test cases better. A "
             "method's gain over `supervised` within this spread may be training noise.",
             "", "| dataset | method | fraction | draw | run | seed | Dice | vs first | cases better |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in sets:
        for r in s.replicates:
            better = f"{r.vs_first.n_better}/{r.vs_first.n_pairs}" if r.vs_first else "—"
            lines.append(f"| {s.dataset} | {s.method} | {s.fraction:g} | {s.draw} | {r.method} | {r.seed} | "
                         f"{r.dice:.4f} | {_versus(r.vs_first) if r.vs_first else 'first'} | {better} |")
    lines += [""] + [f"- {s.method} at {s.fraction:g}, draw {s.draw} ({s.dataset}): {s.dice.n} seeds, Dice "
                     f"{_mean_std(s.dice, 4)}, range {max(r.dice for r in s.replicates) - min(r.dice for r in s.replicates):.4f}"
                     for s in sets]
    return "\n".join(lines) + "\n"


def summarize_alpha(runs: List[Run]) -> List[AlphaGroup]:
    """Partial-annotation runs grouped by (dataset, fraction, method without its alpha tag, alpha)."""
    by_key: Dict[Tuple[str, float, str, float], List[Run]] = {}
    for run in runs:
        line = alpha_line(run)
        if line is not None:
            by_key.setdefault((run.metrics["dataset"], float(run.metrics["fraction"]), line, run.alpha), []).append(run)
    groups = []
    for (dataset, fraction, line, alpha), members in sorted(by_key.items()):
        classes, full = members[0].metrics["classes"], by_key.get((dataset, fraction, REFERENCE_METHOD, 0.0))
        last = [r.result("last") for r in members]
        groups.append(AlphaGroup(dataset, fraction, line, alpha, classes,
                                 dice=estimate(r["dice_mean"] for r in last),
                                 class_dice={c: estimate(r[f"dice_{c}"] for r in last) for c in classes},
                                 vs_full=paired_test(members, full) if full and full is not members else None))
    return groups


def _alpha_reference(groups: List[AlphaGroup], dataset: str, fraction: float) -> Optional[AlphaGroup]:
    """The naive baseline with every annotation: supervised at alpha 0."""
    return next((g for g in groups if (g.dataset, g.fraction, g.method, g.alpha) == (dataset, fraction, REFERENCE_METHOD, 0.0)), None)


def alpha_markdown(groups: List[AlphaGroup]) -> str:
    lines = []
    for dataset, fraction in dict.fromkeys((g.dataset, g.fraction) for g in groups):
        members = sorted((g for g in groups if (g.dataset, g.fraction) == (dataset, fraction)),
                         key=lambda g: (g.alpha, g.method != REFERENCE_METHOD, g.method))
        classes, reference = members[0].classes, _alpha_reference(groups, dataset, fraction)
        versus = f"vs {REFERENCE_METHOD} at alpha 0"
        header = ["alpha", "method", "draws", "Dice", *(f"Dice {c}" for c in classes), versus]
        lines += ["", f"## {dataset}: partial annotations (fraction {fraction:g})", "",
                  "Each structure's annotation removed from alpha of the training cases (`data.partial.alpha`); "
                  f"`{REFERENCE_METHOD}` is the naive baseline (a removed structure is background). \"{versus}\": "
                  "difference of mean test Dice from the naive baseline with every annotation, then the median "
                  "per-case difference and the paired Wilcoxon p-value against it.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for g in members:
            delta = f"{g.dice.mean - reference.dice.mean:+.3f}" if reference else "—"
            if g.vs_full:
                delta += f" ({_versus(g.vs_full)})"
            lines.append("| " + " | ".join([f"{g.alpha:g}", g.method, str(g.dice.n), _mean_std(g.dice),
                                            *(_mean_std(g.class_dice[c]) for c in classes), delta]) + " |")
    return "\n".join(lines) + "\n" if lines else ""


def _mean_std(e: Estimate, digits: int = 3) -> str:
    return f"{e.mean:.{digits}f}" if e.n < 2 else f"{e.mean:.{digits}f} ± {e.std:.{digits}f}"


def _interval(e: Estimate) -> str:
    return f"n={e.n}, no interval" if e.n < 2 else f"[{e.low:.3f}, {e.high:.3f}]"


def _versus(test: Optional[PairedTest]) -> str:
    if test is None:
        return "—"
    return f"{test.median_difference:+.3f}, p={test.p_value:.3g} ({test.n_pairs} pairs)"


def _provenance(runs: List[Run], runs_dir: Path, records_dir: Optional[Path]) -> str:
    n_disk = sum(r.folder.is_relative_to(runs_dir) for r in runs)
    text = f"{len(runs)} finished runs: {n_disk} under `{runs_dir}`"
    if records_dir is not None:
        text += f", {len(runs) - n_disk} from records in `{records_dir}` (run folders no longer on this disk)"
    return text


def markdown(groups: List[Group], provenance: str) -> str:
    lines = [
        "# ssl-bench results", "",
        f"{provenance}. Primary result: the last checkpoint of each method's "
        "primary model, evaluated on the test cases; \"best on val\" is the checkpoint with the best "
        f"validation Dice. Mean ± std over draws; {CONFIDENCE:.0%} CI: t-interval of the mean over draws.",
        f"\"vs {REFERENCE_METHOD}\": median per-case Dice difference and the two-sided paired Wilcoxon "
        f"signed-rank p-value against `{REFERENCE_METHOD}` at the same fraction (scipy.stats.wilcoxon on "
        "per-case Dice, the mean over classes of the primary result). Pairs are (draw, test case), matched by "
        "case id within a draw and pooled over the draws both methods have; a case counts once per draw.",
    ]
    for dataset in dict.fromkeys(g.dataset for g in groups):
        members = [g for g in groups if g.dataset == dataset]
        classes = members[0].classes
        header = ["method", "fraction", "draws", "Dice", f"{CONFIDENCE:.0%} CI", *(f"Dice {c}" for c in classes),
                  "HD95 (mm)", "Dice best on val", f"vs {REFERENCE_METHOD}"]
        lines += ["", f"## {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for g in sorted(members, key=lambda g: (g.fraction, g.method)):
            cells = [g.method, f"{g.fraction:g}", str(g.dice.n), _mean_std(g.dice), _interval(g.dice),
                     *(_mean_std(g.class_dice[c]) for c in classes), _mean_std(g.hd95, 2), _mean_std(g.best_dice),
                     _versus(g.vs_reference) + (" ‡" if g.protocol_differences else "")]
            lines.append("| " + " | ".join(cells) + " |")
        unlike = [g for g in sorted(members, key=lambda g: (g.fraction, g.method)) if g.protocol_differences]
        if unlike:
            lines += ["", f"‡ Not like for like: these runs differ from the `{REFERENCE_METHOD}` runs they are compared "
                      "with in protocol settings, not only in the method's own, so part of the difference may come "
                      "from those settings:", ""]
            lines += [f"- `{g.method}` at {g.fraction:g} vs `{g.reference_method}`: " + "; ".join(g.protocol_differences)
                      for g in unlike]
        compared = [g for g in sorted(members, key=lambda g: (g.fraction, g.method)) if g.per_draw]
        if compared:
            lines += ["", "### Per draw", "",
                      f"Each draw against `{REFERENCE_METHOD}` of the same draw: mean Dice of both, median per-case "
                      "difference, paired Wilcoxon p-value and the test cases where the method is better.", "",
                      f"| method | fraction | draw | Dice | {REFERENCE_METHOD} | median difference | p | cases better |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {g.method} | {g.fraction:g} | {d.draw} | {d.dice:.3f} | {d.reference_dice:.3f} | "
                      f"{d.test.median_difference:+.3f} | {d.test.p_value:.3g} | {d.test.n_better}/{d.test.n_pairs} |"
                      for g in compared for d in g.per_draw]
    return "\n".join(lines) + "\n"


def _draws_label(points: List[Group]) -> str:
    """How many draws each point of a line averages, e.g. "2 draws", or "draws 2/1" left to right when they differ:
    a point without error bar may be one draw, not a stable result."""
    counts = [g.dice.n for g in points]
    if len(set(counts)) == 1:
        return f"{counts[0]} draw" + ("s" if counts[0] > 1 else "")
    return "draws " + "/".join(map(str, counts))


def line_style(index: int) -> Dict[str, str]:
    """Colour and marker of a plot's index-th line: matplotlib's colour cycle repeats after 10 lines, so the
    marker changes with each cycle and no two lines look alike."""
    import matplotlib
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"color": colors[index % len(colors)], "marker": LINE_MARKERS[index // len(colors) % len(LINE_MARKERS)]}


def plot_dice_vs_fraction(groups: List[Group], path: Path) -> Path:
    """One panel per dataset: a line per method with error bars (std over draws), supervised at 100% dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(g.dataset for g in groups))
    fig, axes = plt.subplots(1, len(datasets), figsize=(PANEL_SIZE[0] * len(datasets), PANEL_SIZE[1]), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        members = sorted((g for g in groups if g.dataset == dataset), key=lambda g: g.fraction)
        for index, method in enumerate(dict.fromkeys(g.method for g in members)):
            points = [g for g in members if g.method == method]
            ax.errorbar([g.fraction for g in points], [g.dice.mean for g in points],
                        yerr=[0.0 if math.isnan(g.dice.std) else g.dice.std for g in points],
                        capsize=3, label=f"{method} ({_draws_label(points)})", **line_style(index))
        for g in members:
            if g.method == g.reference_method and g.fraction == FULL_FRACTION:
                ax.axhline(g.dice.mean, linestyle="--", color="grey", label=f"{g.method}, 100% labels")
        fractions = sorted({g.fraction for g in members})
        ax.set_xscale("log")
        ax.set_xticks(fractions, labels=[f"{f:.0%}" for f in fractions])
        ax.minorticks_off()
        ax.set(title=dataset, xlabel="labeled fraction of the training pool", ylabel="test Dice (mean over classes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_dice_vs_alpha(groups: List[AlphaGroup], path: Path) -> Path:
    """Per (dataset, fraction), panels of ALPHA_PANELS_PER_ROW: the mean over classes, then each class; a line per
    method with error bars (std over draws); the naive baseline at alpha 0 dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(dict.fromkeys((g.dataset, g.fraction) for g in groups))
    n_panels = {b: 1 + len(next(g for g in groups if (g.dataset, g.fraction) == b).classes) for b in blocks}
    n_cols = min(ALPHA_PANELS_PER_ROW, max(n_panels.values()))
    block_rows = [math.ceil(n_panels[b] / n_cols) for b in blocks]
    fig, axes = plt.subplots(sum(block_rows), n_cols, figsize=(PANEL_SIZE[0] * n_cols, PANEL_SIZE[1] * sum(block_rows)),
                             squeeze=False)
    first_row = 0
    for (dataset, fraction), n_rows in zip(blocks, block_rows):
        block_axes = list(axes[first_row:first_row + n_rows].flat)
        first_row += n_rows
        members = [g for g in groups if (g.dataset, g.fraction) == (dataset, fraction)]
        classes, reference = members[0].classes, _alpha_reference(groups, dataset, fraction)
        panels = [("mean over classes", lambda g: g.dice)] + [(c, lambda g, c=c: g.class_dice[c]) for c in classes]
        for ax, (title, pick) in zip(block_axes, panels):
            for index, method in enumerate(dict.fromkeys(g.method for g in members)):
                points = sorted((g for g in members if g.method == method), key=lambda g: g.alpha)
                ax.errorbar([g.alpha for g in points], [pick(g).mean for g in points],
                            yerr=[0.0 if math.isnan(pick(g).std) else pick(g).std for g in points],
                            capsize=3, label=method, **line_style(index))
            if reference:
                ax.axhline(pick(reference).mean, linestyle="--", color="grey", label=f"{REFERENCE_METHOD}, alpha 0")
            ax.set(title=f"{dataset}: {title}", xlabel="alpha (share of cases missing each annotation)",
                   ylabel="test Dice", ylim=(0.0, 1.0))
            ax.grid(alpha=0.3)
        block_axes[0].legend(fontsize="small")
        for ax in block_axes[len(panels):]:
            ax.set_visible(False)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    # savefig writes in pieces: write beside the target, then rename, so a kill never leaves half a PNG.
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _csv_text(rows: List[dict]) -> str:
    fields = list(dict.fromkeys(k for row in rows for k in row))  # runs of several datasets: union of columns
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _group_record(g: Group) -> dict:
    test = g.vs_reference
    return {"dataset": g.dataset, "method": g.method, "fraction": g.fraction, "draws": g.dice.n,
            "dice_mean": g.dice.mean, "dice_std": g.dice.std, "dice_ci_low": g.dice.low, "dice_ci_high": g.dice.high,
            "hd95_mean": g.hd95.mean, "best_dice_mean": g.best_dice.mean,
            "protocol_differences": "; ".join(g.protocol_differences),
            **{f"vs_{REFERENCE_METHOD}_{k}": v for k, v in (asdict(test) if test else {}).items()}}


def log_to_wandb(rows: List[dict], groups: List[Group], charts: Dict[str, Path], out: Path, project: str) -> None:
    import wandb
    run = wandb.init(project=project, name="summary", group="summary", job_type="report", dir=str(out),
                     mode=os.environ.get("WANDB_MODE", "offline"))

    def table(records: List[dict]) -> "wandb.Table":
        columns = list(dict.fromkeys(k for r in records for k in r))
        return wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in records])

    run.log({"runs": table(rows), "summary": table([_group_record(g) for g in groups]),
             **{name: wandb.Image(str(path)) for name, path in charts.items()}})
    run.finish()


def write_report(runs_dir: Path, out: Path, wandb_project: Optional[str] = None, records: bool = True) -> Dict[str, Path]:
    """Writes summary.csv, summary.md, dice_vs_fraction.png and (for partial-annotation runs) dice_vs_alpha.png
    into ``out``; logs them to W&B if a project is given. With ``records``, also reads and updates the
    records of ``out/records`` (see the module's docstring)."""
    runs_dir, out = Path(runs_dir), Path(out)
    records_dir = out / RECORDS_DIR if records else None
    runs = load_runs(runs_dir, records_dir)
    if records_dir is not None:
        write_records(runs, runs_dir, records_dir)
    rows = [summary_row(r) for r in runs]
    groups, alpha_groups = summarize_groups(runs), summarize_alpha(runs)
    paths = {"csv": out / "summary.csv", "markdown": out / "summary.md", "plot": out / "dice_vs_fraction.png"}
    atomic_write_text(paths["csv"], _csv_text(rows))
    atomic_write_text(paths["markdown"], markdown(groups, _provenance(runs, runs_dir, records_dir))
                      + replicates_markdown(summarize_replicates(runs)) + alpha_markdown(alpha_groups))
    # Partial-annotation variants have their own plot (against alpha); a point each would clutter this one.
    alpha_variants = {r.method for r in runs if alpha_line(r) is not None}
    fraction_groups = [g for g in groups if g.method not in alpha_variants]
    if fraction_groups:
        plot_dice_vs_fraction(fraction_groups, paths["plot"])
    else:
        del paths["plot"]
    if alpha_groups:
        paths["alpha_plot"] = plot_dice_vs_alpha(alpha_groups, out / "dice_vs_alpha.png")
    if wandb_project:
        charts = {p.stem: p for key, p in paths.items() if key.endswith("plot")}
        log_to_wandb(rows, groups, charts, out, wandb_project)
    return paths
