"""The sweep's progress lines and their ETA (ssl_bench/sweep/progress.py)."""

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ssl_bench.sweep import Cell, Progress
from ssl_bench.sweep.progress import StepCosts, step_costs, summary_line


def test_eta_counts_a_resumed_cell_as_the_share_of_steps_it_trained(tmp_path, monkeypatch):
    """A sweep restarted 900 steps into a 1000-step cell finishes it in a tenth of a cell's time: the ETA must
    count each cell left at ten times that, not at that tenth; a failed cell is no work done."""
    cells = [Cell("supervised", "synthetic", 0.1, draw, (), (), tmp_path / f"draw{draw}") for draw in range(4)]
    for cell, resumed_from in [(cells[0], 900), (cells[1], None)]:
        cell.run_dir.mkdir()
        (cell.run_dir / "metrics.json").write_text(json.dumps({"steps": 1000, "resumed_from_step": resumed_from}))
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    progress = Progress(n_cells=4, pending=cells)
    assert progress.line(1, cells[0]).endswith("(ETA after the first cell)")
    now[0] = 60.0  # the resumed cell's last 100 steps: 60 s, so a whole cell takes 600 s
    progress.finish_one(cells[0])
    assert progress.line(2, cells[1]).endswith("(ETA 0:30:00)")  # 3 cells left × 600 s
    now[0] = 660.0
    progress.finish_one(cells[1])
    now[0] = 700.0  # cell 3 fails (no metrics.json) after 40 s
    progress.finish_one(cells[2])
    assert progress.line(4, cells[3]).endswith(f"(ETA {timedelta(seconds=round(700 / 1.1))})")


def _record(records, run, method, seconds, device=None, draw=0):
    folder = records / "hippocampus" / run / "frac0.1" / f"draw{draw}"
    folder.mkdir(parents=True)
    metrics = {"method": method, "seconds_per_step": seconds}
    if device:
        metrics["provenance"] = {"device": device}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_step_costs_are_each_method_against_supervised_on_the_same_device(tmp_path):
    records = tmp_path / "records"
    _record(records, "supervised", "supervised", 0.4)
    _record(records, "supervised", "supervised", 0.6, draw=1)
    _record(records, "ua_mt", "ua_mt", 3.0)                              # CPU: 6x supervised's median 0.5
    _record(records, "supervised", "supervised", 0.05, device="GPU", draw=2)
    _record(records, "ua_mt", "ua_mt", 0.2, device="GPU", draw=2)       # GPU: 4x
    _record(records, "cps-lambda_max0.0", "cps", 1.0)                   # a control, cheaper than its method
    _record(records, "cps", "cps", 0.3, device="GPU", draw=3)
    _record(records, "unimatch", "unimatch", 0.3, device="TPU")          # no supervised on its device
    (records / "hippocampus" / "supervised" / "frac0.1" / "draw9").mkdir()
    (records / "hippocampus" / "supervised" / "frac0.1" / "draw9" / "metrics.json").write_text("{cut")
    costs = step_costs(records, "hippocampus")
    assert costs.by_run["ua_mt"] == pytest.approx(5.0)                 # the median of 6 and 4
    assert costs.by_run["cps"] == pytest.approx(6.0) and costs.by_run["cps-lambda_max0.0"] == pytest.approx(2.0)
    assert costs.by_method["cps"] == pytest.approx(4.0)                 # the median of 2 (CPU) and 6 (GPU)
    assert "unimatch" not in costs.by_run and "unimatch" not in costs.by_method
    cell = Cell("unimatch", "hippocampus", 0.1, 0, (), (), tmp_path / "u", relative_dir=Path("hippocampus/unimatch"))
    assert costs.relative(cell) == 1.0                                  # unknown: counted as supervised
    assert step_costs(tmp_path / "none", "hippocampus") == StepCosts()


def test_eta_weighs_the_cells_left_by_their_expected_cost(tmp_path, monkeypatch):
    """After a supervised cell of 60 s, one UA-MT cell (5x a supervised step) and one supervised cell are left:
    6 supervised cells' worth, 6 minutes, where an ETA that counted cells would say 2."""
    cells = [Cell(method, "synthetic", 0.1, 0, (), (), tmp_path / method / str(k),
                  relative_dir=Path("synthetic") / method) for k, method in enumerate(["supervised", "ua_mt",
                                                                                       "supervised"])]
    cells[0].run_dir.mkdir(parents=True)
    (cells[0].run_dir / "metrics.json").write_text(json.dumps({"steps": 60, "resumed_from_step": 0}))
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    progress = Progress(3, cells, StepCosts(by_run={"ua_mt": 5.0}))
    progress.line(1, cells[0])
    now[0] = 60.0
    progress.finish_one(cells[0])
    assert progress.line(2, cells[1]).endswith("(ETA 0:06:00)")


def test_the_summary_line_counts_what_the_sweep_did(tmp_path):
    pending = [Cell("supervised", "synthetic", 0.1, draw, (), (), tmp_path / str(draw)) for draw in range(4)]
    pending[0].run_dir.mkdir()
    (pending[0].run_dir / "metrics.json").write_text("{}")
    assert summary_line("done", 3725.4, pending, [pending[1]], n_skipped=5, n_refused=1) == (
        "[sweep] done in 1:02:05: 1 finished, 1 failed, 5 skipped (finished before), 2 not finished, 1 refused")
