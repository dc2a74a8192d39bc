"""The slurm launcher: every unfinished cell as a job of one job array through submitit, each job one cell run by
every task of the job (one per GPU: Lightning's SLURM DDP)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import List

import submitit
import submitit.helpers

from ssl_bench.run.train import train
from ssl_bench.sweep.progress import Progress
from ssl_bench.sweep.spec import PENDING, Cell, SlurmConfig, Sweep

# How often the slurm launcher asks the scheduler whether jobs are done (submitit caches the queries).
SLURM_POLL_S = 30.0


class CellJob(submitit.helpers.Checkpointable):
    """A submitit job: one cell, run by every task of the job (one per GPU: Lightning's SLURM DDP).

    Checkpointable: a job that reaches its time limit or is preempted is requeued with the same cell, and
    train() resumes it from last.ckpt.
    """

    def __call__(self, cell: Cell) -> None:
        train(cell.config())


def _slurm_overrides(slurm: SlurmConfig) -> List[str]:
    """The job's GPUs decide trainer.devices / num_nodes / strategy, whatever the sweep's overrides say."""
    if slurm.gpus_per_node == 0:
        return ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1"]
    ddp = slurm.gpus_per_node * slurm.nodes > 1
    return ["trainer.accelerator=gpu", f"trainer.devices={slurm.gpus_per_node}", f"trainer.num_nodes={slurm.nodes}",
            f"trainer.strategy={'ddp' if ddp else 'auto'}"]


def run_slurm(sweep: Sweep, progress: Progress, cluster: str, poll_s: float) -> List[Cell]:
    """Submits every unfinished cell as one job array, then waits, printing a line as each cell ends.

    Do not start the sweep again while its jobs are queued or running: those cells would be submitted twice.
    """
    s = sweep.config.slurm
    pending = [(k, c) for k, c in enumerate(sweep.cells, 1) if c.status == PENDING]
    if not pending:
        return []
    for _, cell in pending:
        cell.start_over_if_forced()
    jobs_cells = [(k, replace(c, overrides=c.overrides + tuple(_slurm_overrides(s)))) for k, c in pending]
    folder = Path(jobs_cells[0][1].config().run.runs_dir) / ".submitit" / sweep.config.name
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name=f"ssl-bench-{sweep.config.name}", timeout_min=s.timeout_min, nodes=s.nodes,
        tasks_per_node=max(1, s.gpus_per_node), gpus_per_node=s.gpus_per_node, cpus_per_task=s.cpus_per_task,
        mem_gb=s.mem_gb, slurm_partition=s.partition or None)
    with executor.batch():
        jobs = [executor.submit(CellJob(), cell) for _, cell in jobs_cells]
    print(f"[sweep] submitted {len(jobs)} cells to {cluster} (jobs {jobs[0].job_id}...); logs in {folder}", flush=True)
    cell_of_job = {job.job_id: kc for job, kc in zip(jobs, jobs_cells)}
    failed: List[Cell] = []
    progress.started = time.monotonic()
    for job in submitit.helpers.as_completed(jobs, poll_frequency=poll_s):
        k, cell = cell_of_job[job.job_id]
        progress.finish_one(cell)
        state = "finished"
        if job.exception() is not None:
            failed.append(cell)
            state = f"failed: see {job.paths.stderr}"
        else:
            sweep.keep_record(cell)
        print(progress.line(k, cell) + f" {state} (job {job.job_id})", flush=True)
    return failed
