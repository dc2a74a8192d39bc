"""Where and with what a result was computed: the ``provenance`` entry of every metrics.json (and so of every record).

The same config gives results on different hardware, library versions or thread counts that differ by as much as
methods do, so each result says where it came from. Its keys (stable; ssl_bench.records.provenance reads and formats
them, and tolerates entries made before some of them existed):

- ``git_commit``: the short hash of the checkout's commit, ``git_dirty``: whether its tracked files differ from it
  (both None where the code is not a git checkout, or git is missing);
- ``device``: the GPU's name when the run trained on GPUs, else the CPU model; ``device_count``: GPUs used (0 on
  the CPU); ``device_memory_mb``: the GPU's memory (None on the CPU); ``cpu``: the CPU model, ``cpu_count``: the
  machine's logical CPUs;
- ``torch``, ``cuda``, ``cudnn``, ``monai``, ``lightning``, ``python``: versions (``cuda``/``cudnn`` None for a
  CPU build of torch);
- ``precision``: trainer.precision; ``threads``: torch's intra-op threads; ``omp_num_threads``: $OMP_NUM_THREADS
  (None when unset);
- ``hostname``.

Provenance is no part of a run's identity (ssl_bench/run/identity.py): a run stopped on one machine resumes on another,
and its entry then says where it finished.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Optional, Tuple

import lightning
import monai
import torch

from ssl_bench.config import PROJECT_ROOT

GIT_TIMEOUT_S = 10
PROVENANCE_KEYS = ("git_commit", "git_dirty", "device", "device_count", "device_memory_mb", "cpu", "cpu_count",
                   "torch", "cuda", "cudnn", "monai", "lightning", "python", "precision", "threads",
                   "omp_num_threads", "hostname")


# ``<commit>:<true|false>`` (dirty or not): set by ``ssl-bench evidence run --carry`` from the carried source.json.
SOURCE_COMMIT_ENV = "SSL_BENCH_SOURCE_COMMIT"


def git_state(repo: Path = PROJECT_ROOT) -> Tuple[Optional[str], Optional[bool]]:
    """(short commit hash, whether tracked files differ from it) of the checkout at ``repo``; (None, None) when it is
    not a git checkout or git cannot be run."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:  # a copy without git history (a lent GPU machine's): the commit it was carried at, if said
        carried = os.environ.get(SOURCE_COMMIT_ENV, "")
        commit_text, _, dirty_text = carried.partition(":")
        return (commit_text or None), ({"true": True, "false": False}.get(dirty_text) if commit_text else None)
    changes = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if changes is None else bool(changes)


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def collect_provenance(precision: str, device: torch.device, device_count: int) -> dict:
    """The provenance entry of a run that trained on ``device`` (one of its ``device_count`` devices) with
    ``precision``."""
    commit, dirty = git_state()
    on_gpu = device.type == "cuda"
    cpu = cpu_model()
    return {
        "git_commit": commit, "git_dirty": dirty,
        "device": torch.cuda.get_device_name(device) if on_gpu else cpu,
        "device_count": device_count if on_gpu else 0,
        "device_memory_mb": torch.cuda.get_device_properties(device).total_memory // 2**20 if on_gpu else None,
        "cpu": cpu, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        "monai": monai.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
        "precision": precision, "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "hostname": socket.gethostname(),
    }
