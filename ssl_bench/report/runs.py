"""Finished runs: reading run folders and records, and keeping records.

A run is finished exactly when its folder has a ``metrics.json``; its ``per_case.csv`` holds the per-case Dice
the paired tests use and its ``config.yaml`` what it computed. A file that does not parse (a truncated
metrics.json, a per_case.csv without the primary result) is named in a warning and its run left out: one bad
file never blocks the report.

Records: run folders (checkpoints, logs) rarely outlive the machine that trained them, so the report keeps a
copy of each run's three small result files under ``<out>/records/`` in the run's own layout
(``<dataset>/<method>[-<tag>]/frac<f>/draw<d>/``) and reads them back next time. A run folder on disk replaces
its record: the record of the same cell made on the same hardware. A run of the same cell from another machine
(or a record from before runs recorded their hardware) is kept beside it, in ``draw<d>@<hardware>`` (e.g.
``draw0@nvidia-h200``): records of one config from two machines are replicates, and neither overwrites the other.
Delete a record to drop the run from the report.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from ssl_bench.records import CONFIG_FILE, METRICS_FILE, PER_CASE_FILE, RECORDS_DIR, REPLICATE_SEPARATOR, keep_record
from ssl_bench.records.provenance import Provenance, read_provenance
from ssl_bench.utils.dicts import flatten_keys
from ssl_bench.utils.errors import ExplainedError

REFERENCE_METHOD = "supervised"


class ReportError(ExplainedError, ValueError):
    """Nothing to report, or a report that cannot be written; the message names the path."""


class ReportWarning(UserWarning):
    """A run left out of the report (the message names its file and the problem)."""


@dataclass
class Run:
    """One finished run: its metrics.json and the per-case Dice (mean over classes) of its primary result."""
    method: str  # the method folder: <method>[-<tag>]
    metrics: dict
    case_dice: Dict[str, float]
    folder: Optional[Path]
    alpha: float = 0.0  # data.partial.alpha: the fraction of training cases each structure's annotation is removed from
    _config: Optional[dict] = field(default=None, repr=False)

    @property
    def key(self) -> Tuple[str, str, float]:
        return self.dataset, self.method, self.fraction

    @property
    def dataset(self) -> str:
        """The dataset, with the protocol preset a run used (``acdc-ssl4mis``): runs of two protocols are never
        grouped or compared."""
        protocol = self.metrics.get("protocol") or ""
        return self.metrics["dataset"] + (f"-{protocol}" if protocol else "")

    @property
    def fraction(self) -> float:
        """data.fraction, or for a run with a number of labeled patients (data.n_labeled) the labeled share of its
        training cases, so that a count takes its place on the fraction axis (e.g. 7 of ACDC's 70 patients: 0.1)."""
        if self.metrics.get("fraction") is not None:
            return float(self.metrics["fraction"])
        m = self.metrics
        return round(m["n_labeled"] / (m["n_labeled"] + m["n_unlabeled"]), 4)

    @property
    def draw(self) -> int:
        return int(self.metrics["draw"])

    @property
    def line(self) -> str:
        """The method folder without a ``seed<s>`` tag of the run's own trainer.seed (a training-seed sweep axis):
        supervised-seed100 is a replicate of supervised, reported and compared with it."""
        seed = self.config().get("trainer.seed")
        parts = self.method.split("-")
        kept = [parts[0]] + [p for p in parts[1:] if seed is None or p != f"seed{seed}"]
        # SSL4MIS's own labeled patients (data.labeled_selection=first) are a setting of their own, compared with
        # supervised on the same patients.
        if self.metrics.get("labeled_selection") == "first":
            kept.append("first")
        return "-".join(kept)

    @property
    def reference_method(self) -> str:
        """The supervised run of the same tag, e.g. mean_teacher-lr0.001 -> supervised-lr0.001."""
        return REFERENCE_METHOD + self.line[len(self.metrics["method"]):]

    @property
    def seed(self) -> int:
        """ssl_bench.config.run_seed: trainer.seed, or the draw when it is unset."""
        seed = self.config().get("trainer.seed")
        return int(seed if seed is not None else self.metrics["draw"])

    @property
    def provenance(self) -> Provenance:
        return read_provenance(self.metrics, self.config())

    @property
    def hardware(self) -> str:
        return self.provenance.hardware

    @property
    def cell(self) -> PurePosixPath:
        """<dataset>/<method folder>/frac<f>/draw<d>: the run's place in a runs folder (a sweep cell's
        relative_dir), whatever root or replicate suffix its folder has."""
        parts = list(self.folder.parts[-4:])
        parts[-1] = parts[-1].split(REPLICATE_SEPARATOR)[0]
        return PurePosixPath(*parts)

    @property
    def identity(self) -> Tuple[PurePosixPath, str]:
        """A run folder replaces the record of the same identity: the same cell on the same hardware."""
        return self.cell, self.hardware

    def config(self) -> dict:
        """The run's config.yaml as flat dotted keys ({} when the folder has none)."""
        if self._config is None:
            path = self.folder / CONFIG_FILE if self.folder is not None else None
            self._config = (flatten_keys(OmegaConf.to_container(OmegaConf.load(path)))
                            if path is not None and path.is_file() else {})
        return self._config

    def result(self, checkpoint: str) -> dict:
        """metrics.json's summary of the primary model at ``checkpoint`` (last, best or test_best)."""
        return self.metrics["results"][checkpoint][self.metrics["primary"]["model"]]

    def has_checkpoint(self, checkpoint: str) -> bool:
        return self.metrics["primary"]["model"] in self.metrics.get("results", {}).get(checkpoint, {})


@dataclass
class Skipped:
    """A file that made a run unreadable."""
    path: Path
    problem: str

    def describe(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class LoadedRuns:
    runs: List[Run]
    skipped: List[Skipped]
    runs_dir: Path
    records_dir: Optional[Path]

    def on_disk(self) -> List[Run]:
        return [r for r in self.runs if not self.is_record(r)]

    def is_record(self, run: Run) -> bool:
        return self.records_dir is not None and run.folder.resolve().is_relative_to(self.records_dir.resolve())


def read_runs(runs_dir: Path, records_dir: Optional[Path] = None, exclude: Optional[Path] = None) -> LoadedRuns:
    """Every finished run under ``runs_dir`` (none under ``exclude``: a report's own folder), plus the records under
    ``records_dir`` that no run folder replaces (same cell, same hardware); unreadable ones are skipped with a
    ReportWarning naming the file."""
    runs_dir = Path(runs_dir)
    records_dir = Path(records_dir) if records_dir is not None else None
    skipped: List[Skipped] = []
    not_runs = [Path(p).resolve() for p in (records_dir, exclude) if p is not None]
    runs = [r for r in _read_tree(runs_dir, skipped)  # records kept inside runs_dir are not run folders
            if not any(r.folder.resolve().is_relative_to(p) for p in not_runs)]
    if records_dir is not None:
        on_disk = {r.identity for r in runs}
        runs += [r for r in _read_tree(records_dir, skipped) if r.identity not in on_disk]
    if records_dir is not None:  # a record inside runs_dir read as both: once is enough
        skipped = list({s.path: s for s in skipped}.values())
    for s in skipped:
        warnings.warn(f"left out of the report: {s.describe()}", ReportWarning, stacklevel=2)
    if not runs:
        where = f"{runs_dir}" + (f" or {records_dir}" if records_dir is not None else "")
        problems = "".join(f"; skipped {s.describe()}" for s in skipped)
        raise ReportError(f"no finished runs (no readable {METRICS_FILE}) under {where}{problems}")
    runs.sort(key=lambda r: (*r.key, r.draw, r.seed, r.hardware))
    return LoadedRuns(runs, skipped, runs_dir, records_dir)


def load_runs(runs_dir: Path, records_dir: Optional[Path] = None) -> List[Run]:
    """read_runs' runs alone."""
    return read_runs(runs_dir, records_dir).runs


def _read_tree(root: Path, skipped: List[Skipped]) -> List[Run]:
    runs = []
    for path in sorted(root.rglob(METRICS_FILE)):
        try:
            runs.append(read_run(path.parent))
        except _Unreadable as err:
            skipped.append(Skipped(err.path, err.problem))
    return runs


class _Unreadable(Exception):
    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


# What the report reads from metrics.json; a file without them is not a finished run's.
_REQUIRED_METRICS = ("dataset", "method", "fraction", "draw", "classes", "primary", "results")


def read_run(folder: Path) -> Run:
    """The run of one folder; raises _Unreadable naming the file that does not parse."""
    metrics_path, per_case = folder / METRICS_FILE, folder / PER_CASE_FILE
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _Unreadable(metrics_path, f"does not parse ({type(err).__name__}: {err})") from None
    missing = [k for k in _REQUIRED_METRICS if not isinstance(metrics, dict) or k not in metrics]
    if missing:
        raise _Unreadable(metrics_path, f"lacks {', '.join(missing)}")
    primary = metrics["primary"]
    if not isinstance(primary, dict) or primary.get("model") not in metrics["results"].get("last", {}):
        raise _Unreadable(metrics_path, "has no result of its primary model at the last checkpoint")
    if not per_case.is_file():
        raise _Unreadable(per_case, f"missing beside {METRICS_FILE}")
    try:
        with open(per_case, newline="") as f:
            case_dice = {r["case_id"]: _number(r["dice_mean"]) for r in csv.DictReader(f)
                         if r["checkpoint"] == primary["checkpoint"] and r["model"] == primary["model"]}
    except (OSError, UnicodeDecodeError, KeyError, ValueError, csv.Error) as err:
        raise _Unreadable(per_case, f"does not parse ({type(err).__name__}: {err})") from None
    if not case_dice:
        raise _Unreadable(per_case, f"has no rows of the primary result ({primary['checkpoint']}, {primary['model']})")
    run = Run(folder.parents[1].name, metrics, case_dice, folder)
    try:
        run.config()
        run.alpha = _partial_alpha(run)
    except Exception as err:  # omegaconf's parse errors have no common base beyond this
        raise _Unreadable(folder / CONFIG_FILE, f"does not parse ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return run


def _number(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def _partial_alpha(run: Run) -> float:
    """metrics.json's partial_alpha; runs written before it was recorded have it in their config.yaml."""
    if "partial_alpha" in run.metrics:
        return float(run.metrics["partial_alpha"])
    return float(run.config().get("data.partial.alpha", 0.0) or 0.0)


def alpha_line(run: Run) -> Optional[str]:
    """The method folder without its ``alpha<a>`` tag (a sweep axis on data.partial.alpha) and without a training
    seed's tag (Run.line), e.g. smile-alpha0.5-seed1 -> smile; None for a run that is not part of such a sweep."""
    parts = run.line.split("-")
    kept = [p for p in parts if not (re.fullmatch(r"alpha[0-9.]+", p) and float(p[len("alpha"):]) == run.alpha)]
    return "-".join(kept) if len(kept) < len(parts) else None


def write_records(loaded: LoadedRuns) -> List[Path]:
    """Copies the result files of every run folder under ``runs_dir`` to the records (keep_record); returns the
    record folders written."""
    if loaded.records_dir is None:
        return []
    return [keep_record(run.folder, loaded.records_dir / run.folder.relative_to(loaded.runs_dir))
            for run in loaded.on_disk() if run.folder.is_relative_to(loaded.runs_dir)]


