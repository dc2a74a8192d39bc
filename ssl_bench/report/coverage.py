"""Which cells of the sweeps a report covers have no result.

Every cell of a sweep is trained with ``logging.tags: [sweep=<name>]`` in its config.yaml, so the runs a report
reads name the sweeps they belong to. Each such sweep is expanded from its file (``<sweeps_dir>/<name>.yaml``,
ssl_bench.sweep.load_sweep) and every cell without a run or record at its place is listed: a sweep that was
stopped, or whose cells failed, is never reported as if it were complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import List, Optional

from ssl_bench.records import METRICS_FILE
from ssl_bench.report.runs import Run
from ssl_bench.sweep import load_sweep

SWEEP_TAG = re.compile(r"^sweep=(?P<name>.+)$")
NOT_RUN, STARTED, UNREADABLE = "not run", "started, not finished", "result unreadable"


@dataclass
class MissingCell:
    description: str  # e.g. "method=co_training fraction=0.05 draw=2"
    method: str
    labeled: str  # the labeled setting as its folder names it: "0.05" for frac0.05, "labeled7-first", ...
    draw: int
    relative_dir: PurePosixPath
    state: str  # NOT_RUN, STARTED (a stopped or failed run's folder) or UNREADABLE (its metrics.json was skipped)


@dataclass
class SweepCoverage:
    name: str
    source: Optional[Path]  # the sweep file, None when it is not found
    n_cells: int
    missing: List[MissingCell] = field(default_factory=list)
    problem: str = ""  # why the cells could not be listed


def sweeps_of(runs: List[Run]) -> List[str]:
    """The sweeps the runs' configs name (logging.tags ``sweep=<name>``), in first-seen order."""
    names = []
    for run in runs:
        for tag in run.config().get("logging.tags") or []:
            match = SWEEP_TAG.match(str(tag))
            if match and match["name"] not in names:
                names.append(match["name"])
    return names


def sweep_coverage(runs: List[Run], sweeps_dir: Path, runs_dir: Optional[Path] = None) -> List[SweepCoverage]:
    """Per sweep the runs name, its cells that neither a run folder nor a record holds. ``runs_dir`` tells
    a started-but-unfinished cell (its folder is there) from one never run."""
    present = {run.cell for run in runs}
    coverages = []
    for name in sweeps_of(runs):
        source = Path(sweeps_dir) / f"{name}.yaml"
        if not source.is_file():
            coverages.append(SweepCoverage(name, None, 0, problem=f"no sweep file {name}.yaml among the sweeps: its cells "
                                                                  "cannot be listed"))
            continue
        try:
            cells = load_sweep(source, states=False).cells  # its cells, not what ./runs holds
        except Exception as err:  # a sweep file that no longer loads must not block the report
            coverages.append(SweepCoverage(name, source, 0, problem=f"{source.name} does not load: {err}"))
            continue
        missing = []
        for cell in cells:
            relative = PurePosixPath(*Path(cell.relative_dir).parts)
            if relative in present:
                continue
            folder = Path(runs_dir) / relative if runs_dir is not None else None
            state = NOT_RUN
            if folder is not None and (folder / METRICS_FILE).is_file():
                state = UNREADABLE
            elif folder is not None and folder.is_dir():
                state = STARTED
            missing.append(MissingCell(cell.describe(), cell.method, _labeled(relative.parts[2]), int(cell.draw),
                                       relative, state))
        coverages.append(SweepCoverage(name, source, len(cells), missing))
    return coverages


def _labeled(folder: str) -> str:
    """A cell's labeled setting from its folder name: frac0.05 -> "0.05", frac1.0-first_then_draw ->
    "1-first_then_draw"; labeled7-first stays as it is."""
    amount, dash, selection = folder.partition("-")
    return f"{float(amount[len('frac'):]):g}{dash}{selection}" if amount.startswith("frac") else folder
