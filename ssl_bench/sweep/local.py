"""The local launcher: each cell in a child process of its own, as many at once as the sweep has job slots
(``local.jobs``, ``ssl-bench sweep --jobs N``), each slot with its share of the machine's CPU threads and GPUs."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ssl_bench.run.callbacks import INTERRUPTED_EXIT_CODE, STOPPED_EXIT_CODE
from ssl_bench.sweep.progress import Progress
from ssl_bench.sweep.spec import FINISHED, PENDING, Cell

# How often the local launcher checks whether a running cell is done.
LOCAL_POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def job_environments(jobs: int, environ: Optional[Dict[str, str]] = None, cpu_count: Optional[int] = None,
                     gpu_count: Optional[int] = None) -> List[Dict[str, str]]:
    """The environment of each of ``jobs`` job slots: one slot is this process's environment unchanged; with
    more, each gets cpu_count // jobs threads (unless OMP_NUM_THREADS is set) and its share of the visible GPUs."""
    environ = dict(os.environ if environ is None else environ)
    if jobs == 1:
        return [environ]
    cpu_count = cpu_count or os.cpu_count() or 1
    if gpu_count is None:
        gpu_count = torch.cuda.device_count()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else [str(i) for i in range(gpu_count)]
    gpus = gpus[:gpu_count] if gpu_count else []
    per_job = len(gpus) // jobs
    slots = []
    for k in range(jobs):
        env = dict(environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count // jobs)))
        if gpus:
            mine = gpus[k * per_job:(k + 1) * per_job] if per_job else [gpus[k % len(gpus)]]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        slots.append(env)
    return slots


def run_local(cells: List[Cell], progress: Progress, slot_environments: List[Dict[str, str]],
               on_finished: Callable[[Cell], None] = lambda cell: None) -> List[Cell]:
    """Each cell in a child process of its own, as many at once as there are job slots, because:

    - train() reports peak memory from process-wide counters (ru_maxrss, CUDA peak stats), which
      in one process would carry the earlier cells' peaks into every later cell;
    - Lightning's DDP launcher starts the other ranks by re-running the current command line, which must
      then be the cell's own ``ssl-bench train``, not the whole sweep;
    - a crash or out-of-memory in one cell leaves the others running, and each cell starts clean.
    The cost, about ten seconds of imports per cell, is small beside a real run.
    """
    failed: List[Cell] = []
    free = list(range(len(slot_environments)))
    running: Dict[subprocess.Popen, Tuple[Cell, int]] = {}

    def reap(block: bool) -> None:
        while True:
            stop.pass_on(running)
            for child in [c for c in running if c.poll() is not None]:
                cell, slot = running.pop(child)
                free.append(slot)
                progress.finish_one(cell)
                if child.returncode == 0:
                    on_finished(cell)
                elif not (stop.requested and child.returncode in STOPPED_RETURN_CODES):
                    failed.append(cell)
            if free or not running or not block or stop.requested:
                return
            time.sleep(LOCAL_POLL_S)

    with _StopOnSignals() as stop:
        for k, cell in enumerate(cells, 1):
            if cell.status != PENDING:
                state = cell.state()
                print(progress.line(k, cell, "already finished" if state == FINISHED else state), flush=True)
                continue
            reap(block=True)
            if stop.requested:
                break
            slot = free.pop(0)
            where = f" [job {slot + 1}/{len(slot_environments)}]" if len(slot_environments) > 1 else ""
            print(progress.line(k, cell) + where, flush=True)
            cell.start_over_if_forced()
            running[subprocess.Popen(cell.command(), env=slot_environments[slot],
                                     preexec_fn=_die_with_parent(os.getpid()))] = (cell, slot)
        while running:
            reap(block=False)
            if running:
                time.sleep(LOCAL_POLL_S)
    if stop.requested:
        raise stop.stopped()
    return failed


# A cell stopped by a SIGTERM or Ctrl-C: `ssl-bench train` once its state is saved, or the signal itself (Popen's
# -15, -2) if it came before the handlers were installed.
STOPPED_RETURN_CODES = (STOPPED_EXIT_CODE, INTERRUPTED_EXIT_CODE, -signal.SIGTERM, -signal.SIGINT)


class Stopped(Exception):
    """The sweep was stopped by SIGTERM or Ctrl-C, its running cells at the end of their steps."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(signal_name)
        self.signal_name, self.exit_code = signal_name, exit_code


class _StopOnSignals:
    """While the local launcher runs, a SIGTERM (``kill``, a cluster ending the allocation) or Ctrl-C stops the sweep
    cleanly: no new cell starts, each running cell gets a SIGTERM (unless it has one) and saves its state at the end
    of its current step (CheckpointOnStop), and the sweep waits for them. Dying at once instead would have the kernel
    SIGKILL them (_die_with_parent) before they saved. Ctrl-C in a terminal reaches the cells too, which stop the
    same way; a SIGTERM on top of it changes nothing (a second Ctrl-C would stop them at once). A second Ctrl-C to
    the sweep interrupts it at once."""

    def __init__(self):
        self.requested: Optional[int] = None  # the signal that asked for the stop
        self._passed_on: set = set()

    def __enter__(self) -> "_StopOnSignals":
        self._previous = {signum: signal.signal(signum, self._request) for signum in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _request(self, signum, frame) -> None:
        self.requested = self.requested or signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

    def stopped(self) -> "Stopped":
        if self.requested == signal.SIGINT:
            return Stopped("Ctrl-C", INTERRUPTED_EXIT_CODE)
        return Stopped("SIGTERM", STOPPED_EXIT_CODE)

    def pass_on(self, running) -> None:
        """Sends a SIGTERM, once, to every running cell."""
        if not self.requested:
            return
        for child in running:
            if child.pid not in self._passed_on and child.poll() is None:
                child.send_signal(signal.SIGTERM)
                self._passed_on.add(child.pid)


def _die_with_parent(parent_pid: int):
    """A child set-up that has the kernel kill the cell when the sweep dies, even by SIGKILL (Linux), so that
    a restarted sweep never trains a cell beside an orphan of the previous one."""
    if not sys.platform.startswith("linux"):
        return None

    def arrange() -> None:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the sweep died before prctl took effect
            os._exit(1)
    return arrange
