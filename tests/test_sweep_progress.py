"""The sweep's progress lines and their ETA (ssl_bench/sweep/progress.py)."""

import json
import time
from datetime import timedelta

from ssl_bench.sweep import Cell, Progress


def test_eta_counts_a_resumed_cell_as_the_share_of_steps_it_trained(tmp_path, monkeypatch):
    """A sweep restarted 900 steps into a 1000-step cell finishes it in a tenth of a cell's time: the ETA must
    count each cell left at ten times that, not at that tenth; a failed cell is no work done."""
    cells = [Cell("supervised", "synthetic", 0.1, draw, (), (), tmp_path / f"draw{draw}") for draw in range(4)]
    for cell, resumed_from in [(cells[0], 900), (cells[1], None)]:
        cell.run_dir.mkdir()
        (cell.run_dir / "metrics.json").write_text(json.dumps({"steps": 1000, "resumed_from_step": resumed_from}))
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    progress = Progress(n_cells=4, n_pending=4)
    assert progress.line(1, cells[0]).endswith("(ETA after the first cell)")
    now[0] = 60.0  # the resumed cell's last 100 steps: 60 s, so a whole cell takes 600 s
    progress.finish_one(cells[0])
    assert progress.line(2, cells[1]).endswith("(ETA 0:30:00)")  # 3 cells left × 600 s
    now[0] = 660.0
    progress.finish_one(cells[1])
    now[0] = 700.0  # cell 3 fails (no metrics.json) after 40 s
    progress.finish_one(cells[2])
    assert progress.line(4, cells[3]).endswith(f"(ETA {timedelta(seconds=round(700 / 1.1))})")
