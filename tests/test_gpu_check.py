"""make gpu-check's pieces on the CPU: its cell lines, and a tiny grid and throughput curve end to end."""

import os
from pathlib import Path

from ssl_bench.tools.gpu_check import CellSpec, curve_specs, main
from tests.conftest import TINY


def test_a_cell_line_names_its_run_folder_as_train_does():
    spec = CellSpec.parse("mean_teacher 0.1 1 trainer.precision=bf16-mixed run.tag=bf16")
    assert (spec.method, spec.fraction, spec.draw) == ("mean_teacher", 0.1, 1)
    assert spec.metrics_path("hippocampus", Path("runs")) == Path("runs/hippocampus/mean_teacher-bf16/frac0.1/draw1/metrics.json")
    assert "run.tag=bf16" in spec.command("hippocampus", Path("runs"), [])[-1:]
    count = CellSpec.parse("mean_teacher 0.1 0 data.n_labeled=7 protocol=ssl4mis")  # the cell's count wins
    assert count.metrics_path("acdc", Path("runs")) == Path("runs/acdc-ssl4mis/mean_teacher/labeled7/draw0/"
                                                            "metrics.json")
    seeds = curve_specs(CellSpec.parse("supervised 0.1 0"), 2, 1000)
    assert [s.overrides for s in seeds] == [["trainer.seed=1000", "run.tag=seed1000"],
                                            ["trainer.seed=1001", "run.tag=seed1001"]]


def test_gpu_check_runs_cells_at_once_and_writes_its_table(tmp_path, synthetic_cache, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cells = tmp_path / "cells.txt"
    cells.write_text("supervised 0.5 0\nmean_teacher 0.5 0  # two methods at once\n")
    out = tmp_path / "check.md"
    assert main(["--data", "synthetic", "--no-perf", "--cells-file", str(cells), "--jobs", "2",
                 "--runs", str(tmp_path / "runs"), "--out", str(out), f"data.cache_dir={synthetic_cache}",
                 "trainer.max_steps=6", "trainer.val_every_n_steps=3", *TINY]) == 0
    table = out.read_text()
    assert "2 of 2 cells finished" in table
    rows = [line for line in table.splitlines() if line.startswith("| CPU")]
    assert {r.split("|")[2].strip() for r in rows} == {"supervised 0.5 d0", "mean_teacher 0.5 d0"}
    assert all(0 <= float(r.split("|")[7]) <= 1 for r in rows), "a test Dice per cell"
