"""Provenance (ssl_bench/run/provenance_entry.py): every result says where and with what it was computed, and the report
reads it back."""

import shutil
import subprocess

import lightning
import monai
import pytest
import torch

from ssl_bench.records.provenance import read_provenance
from ssl_bench.run.provenance_entry import PROVENANCE_KEYS, collect_provenance, cpu_model, git_state


def test_a_cpu_run_records_the_cpu_versions_precision_and_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    entry = collect_provenance("bf16-mixed", torch.device("cpu"), 1)
    assert tuple(entry) == PROVENANCE_KEYS
    assert entry["device"] == entry["cpu"] == cpu_model() and entry["device_count"] == 0
    assert entry["device_memory_mb"] is None and entry["cpu_count"] >= 1
    assert (entry["torch"], entry["monai"], entry["lightning"]) == (torch.__version__, monai.__version__,
                                                                     lightning.__version__)
    assert entry["precision"] == "bf16-mixed" and entry["threads"] == torch.get_num_threads()
    assert entry["omp_num_threads"] == "3"
    # What the report shows for a run and uses to tell hardware apart.
    shown = read_provenance({"provenance": entry})
    assert shown.recorded and shown.hardware == cpu_model() and shown.torch == torch.__version__
    assert shown.precision == "bf16-mixed" and shown.threads == torch.get_num_threads()


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_the_commit_and_whether_tracked_files_differ_from_it(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    assert git_state(tmp_path) == (None, None)  # not a checkout
    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    commit, dirty = git_state(tmp_path)
    assert len(commit) >= 7 and dirty is False
    (tmp_path / "notes.txt").write_text("untracked files change no result\n")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_state(tmp_path) == (commit, True)


def test_without_git_the_commit_is_unknown_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert git_state() == (None, None)
    assert collect_provenance("32-true", torch.device("cpu"), 1)["git_commit"] is None
