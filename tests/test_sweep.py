"""Sweeps end to end: the smoke sweep through the command line and its report, `make sweep`, and DDP evaluation of a
sweep's run equal to one process. The pieces are tested on their own in test_sweep_spec, test_sweep_local,
test_sweep_slurm and test_sweep_progress."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_bench.cli import main
from ssl_bench.sweep import load_sweep
from conftest import PROJECT_ROOT
from sweep_helpers import (SUBPROCESS_TIMEOUT_S, SWEEPS, execution_overrides, metrics_files,  # noqa: F401
                           one_thread_per_process)

DDP_SCRIPT = Path(__file__).with_name("ddp_eval_script.py")


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, synthetic_cache):
    """experiments/sweeps/smoke.yaml run once through the CLI, as `make sweep SWEEP=smoke RUNS=...` does."""
    runs = tmp_path_factory.mktemp("smoke") / "runs"
    assert main(["sweep", str(SWEEPS / "smoke.yaml"), *execution_overrides(runs, synthetic_cache)]) == 0
    return runs

def test_smoke_sweep_end_to_end_then_skips_finished_cells(smoke_runs, synthetic_cache, tmp_path, capsys):
    methods = [cell.method for cell in load_sweep(SWEEPS / "smoke.yaml").cells]
    assert methods[:2] == ["supervised", "mean_teacher"]
    metrics = [json.loads(p.read_text()) for p in metrics_files(smoke_runs)]
    assert sorted(m["method"] for m in metrics) == sorted(methods)
    assert all(m["fraction"] == 0.5 and m["draw"] == 0 and m["steps"] == 6 for m in metrics)

    stamps = [p.stat().st_mtime_ns for p in metrics_files(smoke_runs)]
    assert main(["sweep", str(SWEEPS / "smoke.yaml"), *execution_overrides(smoke_runs, synthetic_cache)]) == 0
    out = capsys.readouterr().out
    for k, method in enumerate(methods, start=1):
        assert f"[sweep] cell {k}/{len(methods)}: method={method} fraction=0.5 draw=0 (already finished)" in out
    assert [p.stat().st_mtime_ns for p in metrics_files(smoke_runs)] == stamps

    assert main(["report", str(smoke_runs), "--out", str(tmp_path / "results"), "--no-wandb"]) == 0
    with open(tmp_path / "results" / "summary.csv") as f:
        assert sorted(r["method"] for r in csv.DictReader(f)) == sorted(methods)

@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_sweep_passes_the_sweep_file_runs_folder_and_jobs():
    dry = subprocess.run(["make", "-n", "sweep", "SWEEP=smoke", "RUNS=/tmp/somewhere", "JOBS=4"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert "ssl-bench sweep experiments/sweeps/smoke.yaml run.runs_dir=/tmp/somewhere --jobs 4" in dry.stdout

def test_ddp_test_metrics_equal_one_process_per_case(smoke_runs, tmp_path):
    """trainer.test of one checkpoint on 2 gloo processes gives the single-process per-case Dice, every case once,
    on an odd number of test cases (so the DistributedSampler pads one duplicate)."""
    run = smoke_runs / "synthetic" / "mean_teacher" / "frac0.5" / "draw0"
    out = tmp_path / "ddp.json"
    done = subprocess.run([sys.executable, str(DDP_SCRIPT), str(run), str(out), "2"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    with open(run / "per_case.csv") as f:  # train()'s own single-process trainer.test of last.ckpt
        single = [r for r in csv.DictReader(f) if r["checkpoint"] == "last"]
    n_test = json.loads((run / "metrics.json").read_text())["n_test"]
    assert n_test % 2 == 1 and len(single) == 2 * n_test  # student and teacher
    assert sorted((r["model"], r["case_id"]) for r in ddp["rows"]) == sorted((r["model"], r["case_id"]) for r in single)
    ddp_rows = {(r["model"], r["case_id"]): r for r in ddp["rows"]}
    for row in single:
        other = ddp_rows[row["model"], row["case_id"]]
        for column in (c for c in row if c.startswith(("dice_", "hd95_"))):
            assert other[column] == pytest.approx(float(row[column]), abs=1e-9), (row["case_id"], column)
