"""One process at a time in a run folder (ssl_bench/run/run_lock.py): the lock itself, then two real `ssl-bench train`
processes started on one run folder."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ssl_bench.run.run_lock import LOCK_FILE, RunFolderBusy, clear_run_folder, run_folder_lock
from conftest import PROJECT_ROOT, TINY

# A process that takes a folder's lock, says so on stdout, then sleeps until it is killed.
HOLD = ("import sys, time; from ssl_bench.run.run_lock import run_folder_lock\n"
        "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)")


def _holder_process(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_its_holder_and_free_once_released(tmp_path):
    run = tmp_path / "runs" / "synthetic" / "supervised" / "frac0.5" / "draw0"
    with run_folder_lock(run) as lock:
        assert lock == run / LOCK_FILE
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
        (run / "config.yaml").write_text("x")
        with pytest.raises(RunFolderBusy) as refused:
            with run_folder_lock(run):
                pytest.fail("a second holder got the lock")
        message = str(refused.value)
        assert message.startswith(f"{run} is in use by another run: pid {os.getpid()} on host {socket.gethostname()}, "
                                  f"started {holder['started']}")
        assert (run / "config.yaml").read_text() == "x"  # the holder's files are left as they are
    with run_folder_lock(run):  # released: free again
        pass
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "config.yaml"]


def test_a_folder_the_lock_made_and_nothing_was_written_into_is_removed_again(tmp_path):
    run = tmp_path / "runs" / "synthetic" / "supervised" / "frac0.5" / "draw0"
    (tmp_path / "runs").mkdir()
    with run_folder_lock(run):
        assert run.is_dir()
    assert list((tmp_path / "runs").iterdir()) == []  # the folders it made, none it found
    existing = tmp_path / "existing"
    existing.mkdir()
    with run_folder_lock(existing):
        pass
    assert existing.is_dir()


def test_the_lock_of_a_process_that_dies_is_free_at_once(tmp_path):
    """flock is released by the kernel when its process ends, even by SIGKILL: a lock is never stale."""
    run = tmp_path / "run"
    proc = _holder_process(run)
    try:
        with pytest.raises(RunFolderBusy, match=f"pid {proc.pid} on host"):
            with run_folder_lock(run):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with run_folder_lock(run):
        pass


def test_clear_run_folder_keeps_only_the_lock(tmp_path):
    with run_folder_lock(tmp_path / "run") as lock:
        (lock.parent / "checkpoints").mkdir()
        (lock.parent / "checkpoints" / "last.ckpt").write_text("x")
        (lock.parent / "metrics.json").write_text("{}")
        clear_run_folder(lock.parent)
        assert [p.name for p in lock.parent.iterdir()] == [LOCK_FILE]


def test_two_identical_train_commands_at_once_one_is_refused_and_the_other_untouched(tmp_path, synthetic_cache):
    """Two `ssl-bench train` processes of one run folder: the first holds it (paused right after taking the lock, so
    that the second surely comes while it lives), the second exits 2 naming it, and the first then finishes alone:
    each step's row once in metrics.csv, one best checkpoint."""
    args = [sys.executable, "-m", "ssl_bench.cli", "train", "--method", "supervised", "--data", "synthetic",
            f"run.runs_dir={tmp_path / 'runs'}", f"data.cache_dir={synthetic_cache}", *TINY, "data.fraction=0.5",
            "trainer.max_steps=6", "trainer.val_every_n_steps=2", "trainer.log_every_n_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "runs" / "synthetic" / "supervised" / "frac0.5" / "draw0"
    first = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while first.poll() is None and time.time() < deadline and str(first.pid) not in _read(run / LOCK_FILE):
            time.sleep(0.05)
        assert str(first.pid) in _read(run / LOCK_FILE), "the first run never took the run folder's lock"
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr[-2000:]
    assert (f"ssl-bench: error: {run} is in use by another run: pid {first.pid} on host {socket.gethostname()}, "
            "started ") in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err[-2000:]
    with open(run / "csv" / "metrics.csv", newline="") as f:
        steps = [(r["step"], r.get("train/loss", "")) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(steps) == len(set(steps)) == 6
    best = [p.name for p in (run / "checkpoints").glob("best-*")]
    assert len(best) == 1 and "-v" not in best[0], best
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6


def _read(path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
