"""A sweep's progress lines: ``[sweep] cell k/n: ... (ETA ...)``."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional

from ssl_bench.identity import METRICS_FILE
from ssl_bench.sweep.spec import Cell


class Progress:
    """``[sweep] cell k/n: ... (ETA ...)``: the wall time so far per cell of work done, times the cells left.

    A cell resumed from a checkpoint counts as the share of its steps it trained in this sweep, and a failed
    cell as none, so a sweep restarted near the end of a cell does not promise the next cells in minutes."""

    def __init__(self, n_cells: int, n_pending: int):
        self.n_cells, self.left = n_cells, n_pending
        self.started: Optional[float] = None
        self.cells_of_work = 0.0

    def line(self, k: int, cell: Cell, note: str = "") -> str:
        if self.started is None:
            self.started = time.monotonic()
        if self.cells_of_work > 0:
            per_cell = (time.monotonic() - self.started) / self.cells_of_work
            note = note or f"ETA {timedelta(seconds=round(per_cell * self.left))}"
        return f"[sweep] cell {k}/{self.n_cells}: {cell.describe()} ({note or 'ETA after the first cell'})"

    def finish_one(self, cell: Cell) -> None:
        self.cells_of_work += _share_trained_now(cell.run_dir / METRICS_FILE)
        self.left -= 1


def _share_trained_now(metrics_path: Path) -> float:
    """The share of a cell's steps this sweep trained: 1 from scratch, less when resumed, 0 when it failed."""
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return 0.0
    steps, resumed_from = metrics.get("steps") or 0, metrics.get("resumed_from_step") or 0
    return (steps - resumed_from) / steps if steps > 0 else 1.0
