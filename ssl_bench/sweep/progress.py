"""A sweep's progress lines, ``[sweep] cell k/n: ... (ETA ...)``, and its closing summary line.

The ETA weighs each cell by what it is expected to cost: its steps times its method's seconds per step relative
to ``supervised`` (a UA-MT step costs several supervised ones), measured in the records of the sweep's dataset on one
device at a time (``--records``, else the project's results/records). A method with no such record counts as
``supervised``. The time so far per unit of work done, times the work left, is the ETA.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ssl_bench.config import PROJECT_ROOT, ConfigError
from ssl_bench.run.identity import METRICS_FILE
from ssl_bench.sweep.spec import Cell

BASELINE = "supervised"
# The project's committed records, where a sweep without --records finds the methods' relative costs.
PROJECT_RECORDS = PROJECT_ROOT / "results" / "records"
# Records that say nothing about their device were made before runs recorded it (on the CPU machines).
UNRECORDED_DEVICE = "unrecorded"


@dataclass
class StepCosts:
    """Seconds per step relative to ``supervised``'s, by run name (``<method>[-<tag>]``, e.g. a control that skips
    its method's unsupervised passes) and by method (all its runs)."""
    by_run: Dict[str, float] = field(default_factory=dict)
    by_method: Dict[str, float] = field(default_factory=dict)

    def relative(self, cell: Cell) -> float:
        name = cell.relative_dir.parts[1] if len(cell.relative_dir.parts) > 1 else cell.method
        return self.by_run.get(name) or self.by_method.get(cell.method) or 1.0


def step_costs(records_dir: Optional[Path], dataset: str) -> StepCosts:
    """The relative step costs in the records of ``dataset``: on each device, a run's (or method's) median seconds
    per step over supervised's median there; over devices, the median of those ratios."""
    folder = Path(records_dir) / dataset if records_dir is not None else None
    seconds = defaultdict(lambda: defaultdict(list))  # device -> key -> [s/step]; keys "run:<name>", "method:<m>"
    for path in sorted(folder.glob(f"*/*/*/{METRICS_FILE}")) if folder is not None and folder.is_dir() else []:
        try:
            metrics = json.loads(path.read_text())
            per_step = float(metrics["seconds_per_step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable record tells nothing about cost
        device = (metrics.get("provenance") or {}).get("device", UNRECORDED_DEVICE)
        seconds[device][f"run:{path.parts[-4]}"].append(per_step)
        seconds[device][f"method:{metrics.get('method', '')}"].append(per_step)
    ratios = defaultdict(list)
    for keys in seconds.values():
        baseline = keys.get(f"run:{BASELINE}")
        if baseline:
            for key, values in keys.items():
                ratios[key].append(statistics.median(values) / statistics.median(baseline))
    costs = StepCosts()
    for key, values in ratios.items():
        kind, name = key.split(":", 1)
        (costs.by_run if kind == "run" else costs.by_method)[name] = statistics.median(values)
    return costs


def sweep_step_costs(records_dir: Optional[Path], cells: Sequence[Cell]) -> StepCosts:
    """The step costs for a sweep's cells: from ``records_dir`` (the sweep's --records) or the project's records."""
    if not cells:
        return StepCosts()
    dataset = cells[0].relative_dir.parts[0] if cells[0].relative_dir.parts else cells[0].data
    return step_costs(records_dir if records_dir is not None else PROJECT_RECORDS, dataset)


def cell_work(cell: Cell, costs: StepCosts) -> float:
    """A cell's expected cost in supervised steps: its steps times its relative step cost."""
    try:
        steps = cell.config().trainer.max_steps
    except ConfigError:
        steps = 1  # the cell fails at once; it weighs next to nothing
    return costs.relative(cell) * steps


class Progress:
    """``[sweep] cell k/n: ... (ETA ...)``: the wall time so far per unit of work done, times the work left.

    A cell resumed from a checkpoint counts as the share of its steps it trained in this sweep, and a failed
    cell as none, so a sweep restarted near the end of a cell does not promise the next cells in minutes."""

    def __init__(self, n_cells: int, pending: Sequence[Cell], costs: Optional[StepCosts] = None):
        self.n_cells = n_cells
        self.costs = costs or StepCosts()
        self._work = {cell.run_dir: cell_work(cell, self.costs) for cell in pending}  # a cell's folder names it
        self.left = sum(self._work.values())
        self.started: Optional[float] = None
        self.work_done = 0.0

    def line(self, k: int, cell: Cell, note: str = "") -> str:
        if self.started is None:
            self.started = time.monotonic()
        if self.work_done > 0:
            per_unit = (time.monotonic() - self.started) / self.work_done
            note = note or f"ETA {timedelta(seconds=round(per_unit * self.left))}"
        return f"[sweep] cell {k}/{self.n_cells}: {cell.describe()} ({note or 'ETA after the first cell'})"

    def finish_one(self, cell: Cell) -> None:
        work = self._work.pop(cell.run_dir, None)
        if work is None:
            return
        self.work_done += work * _share_trained_now(cell.run_dir / METRICS_FILE)
        self.left -= work


def _share_trained_now(metrics_path: Path) -> float:
    """The share of a cell's steps this sweep trained: 1 from scratch, less when resumed, 0 when it failed."""
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return 0.0
    steps, resumed_from = metrics.get("steps") or 0, metrics.get("resumed_from_step") or 0
    return (steps - resumed_from) / steps if steps > 0 else 1.0


def summary_line(outcome: str, seconds: float, pending: List[Cell], failed: Sequence[Cell], n_skipped: int,
                 n_refused: int) -> str:
    """``[sweep] done in 0:42:10: 6 finished, 1 failed, 3 skipped (finished before)``: the sweep's last line."""
    failed_dirs = {cell.run_dir for cell in failed}
    finished = sum(cell.run_dir not in failed_dirs and (cell.run_dir / METRICS_FILE).is_file() for cell in pending)
    not_run = len(pending) - finished - len(failed)
    parts = [f"{finished} finished", f"{len(failed)} failed", f"{n_skipped} skipped (finished before)"]
    parts += [f"{not_run} not finished"] if not_run > 0 else []
    parts += [f"{n_refused} refused"] if n_refused else []
    return f"[sweep] {outcome} in {timedelta(seconds=round(seconds))}: {', '.join(parts)}"
