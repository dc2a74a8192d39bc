"""The local launcher (ssl_bench/sweep/local.py): job slots, cells at once, and a sweep killed or stopped by SIGTERM
or Ctrl-C that the same command completes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from ssl_bench.cli import main
from ssl_bench.run.callbacks import STOPPED_EXIT_CODE
from ssl_bench.sweep import Cell, job_environments, load_sweep, run_sweep
from conftest import PROJECT_ROOT
from sweep_helpers import (SUBPROCESS_TIMEOUT_S, execution_overrides, metrics_files, one_thread_per_process,  # noqa: F401 (autouse)
                           processes_mentioning, write_sweep)
from test_train_e2e import TINY


def test_job_slots_split_threads_and_gpus():
    env = {"PATH": "/bin"}
    assert job_environments(1, env, cpu_count=16, gpu_count=4) == [env]  # one job: the environment unchanged
    two = job_environments(2, env, cpu_count=16, gpu_count=4)
    assert [(e["OMP_NUM_THREADS"], e["CUDA_VISIBLE_DEVICES"]) for e in two] == [("8", "0,1"), ("8", "2,3")]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in job_environments(3, env, cpu_count=2, gpu_count=1)] == ["0"] * 3
    assert [e["OMP_NUM_THREADS"] for e in job_environments(3, env, cpu_count=2, gpu_count=1)] == ["1"] * 3
    visible = job_environments(2, {"CUDA_VISIBLE_DEVICES": "3,5", "OMP_NUM_THREADS": "2"}, cpu_count=8, gpu_count=2)
    assert [(e["OMP_NUM_THREADS"], e["CUDA_VISIBLE_DEVICES"]) for e in visible] == [("2", "3"), ("2", "5")]
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in job_environments(2, env, cpu_count=4, gpu_count=0))


# A stand-in for a cell's training (no timing involved): the first two cells each wait until both have started,
# which only cells running at once can do, then write their result; the third fails at once.

RENDEZVOUS_CELL = """
import pathlib, sys, time
run_dir, others = pathlib.Path(sys.argv[1]), [pathlib.Path(p) for p in sys.argv[2:]]
if not others:
    sys.exit(1)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "started").write_text("")
deadline = time.time() + 60
while not all((o / "started").is_file() for o in others):
    if time.time() > deadline:
        sys.exit(2)
    time.sleep(0.05)
(run_dir / "metrics.json").write_text("{}")
"""

def test_local_jobs_run_cells_at_once_and_a_failed_cell_leaves_the_others(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path / "jobs.yaml", methods=["supervised", "mean_teacher", "pi_model"],
                        local={"jobs": 2})
    sweep = load_sweep(path, [f"run.runs_dir={tmp_path / 'runs'}"])
    waiting = [c.run_dir for c in sweep.cells[:2]]
    monkeypatch.setattr(Cell, "command", lambda cell: [
        sys.executable, "-c", RENDEZVOUS_CELL, str(cell.run_dir),
        *([str(d) for d in waiting if d != cell.run_dir] if cell.run_dir in waiting else [])])
    assert run_sweep(sweep) == 1
    assert [(c.run_dir / "metrics.json").is_file() for c in sweep.cells] == [True, True, False]
    out, err = capsys.readouterr()
    assert "[job 1/2]" in out and "[job 2/2]" in out
    assert "failed: method=pi_model" in err and "method=supervised" not in err
    # The sweep's last line sums it up.
    assert re.fullmatch(r"\[sweep\] done in 0:00:\d\d: 2 finished, 1 failed, 0 skipped \(finished before\)",
                        out.splitlines()[-1])

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sweep's children die with it on Linux only")
def test_killed_sweep_resumes_with_exactly_one_result_per_cell(tmp_path, synthetic_cache, capfd):
    """A real SIGKILL of the sweep while its second cell trains, then the same command again."""
    runs = tmp_path / "runs"
    # An extra axis makes the first cell short and the second long enough to be killed mid-training.
    path = write_sweep(tmp_path / "kill.yaml", axes={"trainer.max_steps": [8, 100]},
                        overrides=[*TINY, "trainer.val_every_n_steps=20"])
    args = ["sweep", str(path), *execution_overrides(runs, synthetic_cache)]
    second = runs / "synthetic" / "supervised-max_steps100" / "frac0.5" / "draw0"
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + SUBPROCESS_TIMEOUT_S
        while not (second / "checkpoints" / "last.ckpt").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (second / "checkpoints" / "last.ckpt").is_file(), "the second cell wrote no checkpoint in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while processes_mentioning(str(runs)) and time.time() < deadline:  # the cell dies with the sweep
        time.sleep(0.1)
    assert not processes_mentioning(str(runs)), "a cell outlived the killed sweep"
    assert len(metrics_files(runs)) == 1 and not (second / "metrics.json").exists()
    for path_written in [*runs.rglob("*.json"), *runs.rglob("*.yaml")]:  # written atomically: never half a file
        yaml.safe_load(path_written.read_text())

    assert main(args) == 0
    out = capfd.readouterr().out
    assert "cell 1/2: method=supervised fraction=0.5 draw=0 trainer.max_steps=8 (already finished)" in out
    assert "cell 2/2: method=supervised fraction=0.5 draw=0 trainer.max_steps=100 (ETA" in out
    assert "resuming from" in out
    assert out.splitlines()[-1].endswith(": 1 finished, 0 failed, 1 skipped (finished before)")
    metrics = [json.loads(p.read_text()) for p in metrics_files(runs)]
    assert sorted(m["steps"] for m in metrics) == [8, 100]
    resumed = next(m for m in metrics if m["steps"] == 100)
    assert 0 < resumed["resumed_from_step"] < 100

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sweep's children die with it on Linux only")
@pytest.mark.parametrize("how, max_steps", [("sigterm", 100), ("ctrl_c", 40)])
def test_sweep_stopped_by_sigterm_or_ctrl_c_has_its_cell_save_its_step_then_resumes_it(tmp_path, synthetic_cache,
                                                                                       how, max_steps):
    """A SIGTERM to the sweep alone (as `kill PID`), or Ctrl-C in its terminal (a SIGINT to the sweep and its cell),
    while its cell trains: the sweep passes a SIGTERM on, waits for the cell to save the state of the step it was in,
    and exits with 143 (130); the same command resumes the cell there."""
    runs = tmp_path / "runs"
    path = write_sweep(tmp_path / "stop.yaml", draws=[0],
                        overrides=[*TINY, f"trainer.max_steps={max_steps}", "trainer.val_every_n_steps=10"])
    args = ["sweep", str(path), *execution_overrides(runs, synthetic_cache)]
    last = runs / "synthetic" / "supervised" / "frac0.5" / "draw0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + SUBPROCESS_TIMEOUT_S
        while not last.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)  # the first validation's checkpoint: training, with the stop handlers installed
        assert last.is_file(), "the cell wrote no checkpoint in time"
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        out, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        proc.kill()
    name, code = ("SIGTERM", STOPPED_EXIT_CODE) if how == "sigterm" else ("Ctrl-C", 130)
    assert proc.returncode == code, out[-2000:]
    assert f"[sweep] stopped by {name}" in out and f"stopped by {name}" in out.split("[sweep] stopped")[0]
    assert re.search(r"\[sweep\] stopped in [\d:]+: 0 finished, 0 failed, 0 skipped \(finished before\), 1 not "
                     "finished", out), out[-2000:]
    assert not processes_mentioning(str(runs)), "the cell outlived the stopped sweep"
    assert not metrics_files(runs)
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= stopped_at < max_steps
    if "saved to" not in out:  # stopped at a validation: its checkpoint, or the one before
        assert stopped_at % 10 == 0 and f"the same command resumes from step {stopped_at}" in out
    else:
        assert f"stopped by {name} after step {stopped_at}, saved to {last}" in out

    assert main(args) == 0
    [metrics] = [json.loads(p.read_text()) for p in metrics_files(runs)]
    assert metrics["steps"] == max_steps and metrics["resumed_from_step"] == stopped_at
