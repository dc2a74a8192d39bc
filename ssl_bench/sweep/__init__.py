"""Sweeps: methods x labeled fractions x draws (x any extra config axis), each cell an ordinary run of train().

- ``spec``: the sweep file, its cells, their states (finished, recorded, refused, pending) and the --only selection;
- ``local``: the local launcher (cells in child processes, several at once: --jobs) and stopping a sweep cleanly;
- ``slurm``: the slurm launcher (submitit job arrays);
- ``progress``: the per-cell progress lines and their ETA.

Resuming is train()'s: a finished cell is skipped and an interrupted one resumes from its last checkpoint, so a sweep
killed at any moment is completed by starting it again. With a records folder, each cell's result files are copied
there as soon as the cell finishes, so that a run folder on scratch, or on a machine that goes away, loses nothing the
report needs. Work shared by several cells (e.g. contrastive pretraining per dataset and draw, docs/methods.md
"contrastive") is an ordinary run that the method's train() produces on first use and reuses afterwards; when cells
run at once (jobs > 1, or slurm), the first cell of a draw to reach the contrastive pretraining runs it while the
draw's other contrastive cells wait on a file lock in its folder, then reuse it (on a filesystem with working flock).
"""

from __future__ import annotations

import sys
import time

from ssl_bench.run.callbacks import INTERRUPTED_EXIT_CODE
from ssl_bench.sweep.local import Stopped, job_environments, run_local
from ssl_bench.sweep.progress import Progress, summary_line, sweep_step_costs
from ssl_bench.sweep.slurm import SLURM_POLL_S, CellJob, run_slurm
from ssl_bench.sweep.spec import (PENDING, RECORDED, REFUSED, Cell, Sweep, SweepConfig, SweepError, describe_cells,
                                  load_sweep, select_cells)

__all__ = ["Cell", "CellJob", "Progress", "Sweep", "SweepConfig", "SweepError", "describe_cells", "job_environments",
           "load_sweep", "run_sweep", "select_cells"]


def run_sweep(sweep: Sweep, slurm_cluster: str = "slurm", slurm_poll_s: float = SLURM_POLL_S) -> int:
    """Runs every unfinished cell; 0 when all cells are finished. ``slurm_cluster="local"`` runs the slurm
    launcher's jobs through submitit's local executor (subprocesses on this machine)."""
    started = time.monotonic()
    cells = sweep.cells
    pending = [c for c in cells if c.status == PENDING]
    n_recorded = sum(c.status == RECORDED for c in cells)
    refused = [c for c in cells if c.status == REFUSED]
    n_skipped = len(cells) - len(pending) - len(refused)
    print(f"[sweep] {sweep.config.name}: {len(cells)} cells, {n_skipped} already finished"
          + (f" ({n_recorded} of them recorded only)" if n_recorded else "")
          + (f", {len(refused)} refused" if refused else "") + f" ({sweep.source})", flush=True)
    progress = Progress(len(cells), pending, sweep_step_costs(sweep.records_dir, pending))

    def summary(outcome: str, failed) -> str:
        return summary_line(outcome, time.monotonic() - started, pending, failed, n_skipped, len(refused))

    try:
        if sweep.config.launcher == "local":
            failed = run_local(cells, progress, job_environments(sweep.config.local.jobs), sweep.keep_record)
        else:
            failed = run_slurm(sweep, progress, slurm_cluster, slurm_poll_s)
    except KeyboardInterrupt:
        print("[sweep] interrupted at once: run the same command again to resume", flush=True)
        print(summary("interrupted", []), flush=True)
        return INTERRUPTED_EXIT_CODE
    except Stopped as stopped:
        print(f"[sweep] stopped by {stopped.signal_name}, each running cell at the end of its step: run the same "
              "command again to resume", flush=True)
        print(summary("stopped", []), flush=True)
        return stopped.exit_code
    for cell in failed:
        print(f"[sweep] failed: {cell.describe()} ({cell.run_dir})", file=sys.stderr)
    for cell in refused:
        print(f"[sweep] refused: {cell.describe()}: {cell.note}", file=sys.stderr)
    print(summary("done", failed), flush=True)
    return 1 if failed or refused else 0
