"""``make gpu-check``: what this stack does on the GPU in front of you, in one command of a few minutes.

1. ``make perf`` on the GPU: the supervised step through the stack against a bare PyTorch loop, and every method's
   step against its analytic minimum (ssl_bench/tools/perf.py); optionally the supervised step under other execution
   options first (``--perf-variants``, e.g. bf16 or torch.compile), so their speed is measured on the same machine.
2. Real cells (the protocol's 2000 steps, validation and test), several at once on the one GPU, each an ordinary
   ``ssl-bench train`` process with its share of the CPU threads: steps/s, wall seconds, peak GPU memory and test
   Dice per cell. By default supervised, mean_teacher and co_training at 10% labels, draw 0, all at once.
3. Optionally (``--curve 1,2,4,8``) the throughput of k replicates (trainer.seed) of one cell sharing the GPU, for
   each k: cells per hour and training steps per second summed over the cells.

Needs nothing but this repository and the data root (no internet, no W&B). The tables are printed and written to
``--out`` (default ``gpu-check.md`` in the runs folder) as each part ends. ``--budget-s`` stops starting new work
once that many seconds have passed, so the command ends in a known time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from ssl_bench.config import load_config
from ssl_bench.run.paths import run_dir
from ssl_bench.sweep import job_environments

# The grid the issue asks for at least: three methods of very different cost at 10% labels, draw 0.
DEFAULT_CELLS = ("supervised 0.1 0", "mean_teacher 0.1 0", "co_training 0.1 0")
# Execution keys every cell gets: no W&B, no progress bar (several cells share one terminal).
QUIET = ("logging.wandb=false", "trainer.enable_progress_bar=false")
MAX_JOBS = 8


def device_name() -> str:
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{names[0]}" + (f" (x{len(names)})" if len(names) > 1 else "")
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


@dataclass
class CellSpec:
    """One cell: ``method fraction draw [override ...]`` (a line of a cells file, or one of --cells)."""
    method: str
    fraction: float
    draw: int
    overrides: List[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "CellSpec":
        method, fraction, draw, *overrides = shlex.split(text)
        return cls(method, float(fraction), int(draw), overrides)

    @property
    def name(self) -> str:
        extra = " ".join(o for o in self.overrides if not o.startswith("logging."))
        return f"{self.method} {self.fraction:g} d{self.draw}" + (f" {extra}" if extra else "")

    def command(self, data: str, runs: Path, overrides: Sequence[str]) -> List[str]:
        return [sys.executable, "-m", "ssl_bench.cli", "train", "--method", self.method, "--data", data,
                f"data.fraction={self.fraction}", f"data.draw={self.draw}", f"run.runs_dir={runs}", *QUIET,
                *overrides, *self.overrides]

    def metrics_path(self, data: str, runs: Path) -> Path:
        """Where train() writes the cell's metrics.json: its run folder as the cell's config names it (a run.tag, or
        data.n_labeled in place of the fraction, change it)."""
        cfg = load_config(self.method, data, [f"data.fraction={self.fraction}", f"data.draw={self.draw}",
                                              f"run.runs_dir={runs}", *self.overrides])
        return run_dir(cfg) / "metrics.json"


@dataclass
class CellResult:
    spec: CellSpec
    metrics: Optional[dict]
    wall_s: float
    returncode: int

    def row(self, device: str) -> str:
        m = self.metrics
        if m is None:
            return f"| {device} | {self.spec.name} | failed (exit {self.returncode}) | | {self.wall_s:.0f} | | |"
        steps_per_s = 1.0 / m["seconds_per_step"] if m.get("seconds_per_step") else float("nan")
        return (f"| {device} | {self.spec.name} | {steps_per_s:.1f} | {m['wall_time_s']:.0f} | {self.wall_s:.0f} | "
                f"{m['peak_memory_mb']:.0f} | {m['primary']['dice_mean']:.4f} |")


CELL_TABLE_HEAD = ["| device | cell | steps/s | wall s (in the run) | wall s (process) | peak memory MiB | test Dice |",
                   "|---|---|---|---|---|---|---|"]


def run_pool(specs: List[CellSpec], data: str, runs: Path, overrides: Sequence[str], jobs: int, log_dir: Path,
             deadline: float, on_result: Callable[[CellResult], None] = lambda r: None) -> List[CellResult]:
    """The cells, ``jobs`` at a time, each in a process of its own with cpu_count // jobs threads; a cell not started
    by ``deadline`` (a time.perf_counter() value) is not started. Results in the order the cells end."""
    environments = job_environments(jobs)
    pending, running, results = list(specs), {}, []
    while pending or running:
        while pending and len(running) < jobs and time.perf_counter() < deadline:
            spec = pending.pop(0)
            slot = next(k for k in range(jobs) if k not in {s for _, s, _, _ in running.values()})
            log = open(log_dir / (spec.name.replace(" ", "_").replace("=", "").replace("/", "_")[:120] + ".log"), "w")
            child = subprocess.Popen(spec.command(data, runs, overrides), env=environments[slot], stdout=log,
                                     stderr=subprocess.STDOUT)
            running[child] = (spec, slot, log, time.perf_counter())
        if not running:
            break
        time.sleep(0.5)
        for child in [c for c in running if c.poll() is not None]:
            spec, _, log, started = running.pop(child)
            log.close()
            path = spec.metrics_path(data, runs)
            metrics = json.loads(path.read_text()) if child.returncode == 0 and path.is_file() else None
            result = CellResult(spec, metrics, time.perf_counter() - started, child.returncode)
            results.append(result)
            on_result(result)
    return results


def curve_specs(cell: CellSpec, k: int, first_seed: int) -> List[CellSpec]:
    return [CellSpec(cell.method, cell.fraction, cell.draw,
                     [*cell.overrides, f"trainer.seed={seed}", f"run.tag=seed{seed}"])
            for seed in range(first_seed, first_seed + k)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hippocampus")
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS),
                        help="'method fraction draw [override ...]', comma-separated (default: %(default)s)")
    parser.add_argument("--cells-file", help="one cell a line, as --cells; '#' starts a comment")
    parser.add_argument("--jobs", type=int, default=0, help=f"cells at once (default: all, at most {MAX_JOBS})")
    parser.add_argument("--perf-steps", type=int, default=20, help="timed steps per method in the perf part")
    parser.add_argument("--no-perf", action="store_true", help="skip the perf part")
    parser.add_argument("--perf-methods", default="all", help="methods of the every-method perf (comma-separated, "
                        "'all', or '' to skip it)")
    parser.add_argument("--perf-variants", default="", help="';'-separated override sets: the supervised perf under "
                        "each, e.g. 'trainer.precision=bf16-mixed;trainer.compile=reduce-overhead'")
    parser.add_argument("--curve", default="", help="e.g. 1,2,4,8: throughput of that many replicate cells at once")
    parser.add_argument("--curve-cell", default="supervised 0.1 0",
                        help="the cell the curve replicates, as --cells (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no new work after this long")
    parser.add_argument("--runs", default=None, help="runs folder (default: a new temporary folder)")
    parser.add_argument("--out", default=None, help="table file (default: <runs>/gpu-check.md)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every cell and the perf part")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    runs = Path(args.runs or tempfile.mkdtemp(prefix="ssl-bench-gpu-check-")).resolve()
    log_dir = runs / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else runs / "gpu-check.md"
    device = device_name()
    lines = [f"# gpu-check on {device}", "", f"overrides of every cell and perf: {' '.join(args.overrides) or 'none'}",
             ""]

    def write():
        out.write_text("\n".join(lines + [f"", f"elapsed {time.perf_counter() - started:.0f} s"]) + "\n")

    def perf(methods: str, extra: Sequence[str], title: str):
        command = [sys.executable, "-m", "ssl_bench.tools.perf", "--data", args.data, "--steps", str(args.perf_steps),
                   "--methods", methods, *args.overrides, *extra]
        done = subprocess.run(command, capture_output=True, text=True)
        text = done.stdout[done.stdout.find("\ndevice:"):].strip() if "\ndevice:" in done.stdout else ""
        lines.extend([f"## {title}", "", "```", text or f"perf failed (exit {done.returncode})\n"
                      + done.stderr[-2000:], "```", ""])
        print("\n".join(lines[-5:]), flush=True)
        write()

    if not args.no_perf:
        for variant in [v for v in args.perf_variants.split(";") if v.strip()]:
            if time.perf_counter() < deadline:
                perf("supervised", variant.split(), f"perf, supervised, with {variant}")
        if args.perf_methods and time.perf_counter() < deadline:
            perf(args.perf_methods, [], f"perf, {'every method' if args.perf_methods == 'all' else args.perf_methods}")

    texts = [c for c in args.cells.split(",") if c.strip()]
    if args.cells_file:
        texts = [ln.split("#")[0] for ln in Path(args.cells_file).read_text().splitlines() if ln.split("#")[0].strip()]
    specs = [CellSpec.parse(t) for t in texts]
    if specs and time.perf_counter() < deadline:
        jobs = args.jobs or min(len(specs), MAX_JOBS)
        lines += [f"## {len(specs)} cells, {jobs} at once on one GPU ({args.data})", ""] + CELL_TABLE_HEAD
        grid_started = time.perf_counter()

        def add(result: CellResult):
            lines.append(result.row(device))
            print(lines[-1], flush=True)
            write()

        results = run_pool(specs, args.data, runs, args.overrides, jobs, log_dir, deadline, add)
        lines += ["", f"{len([r for r in results if r.metrics])} of {len(specs)} cells finished in "
                  f"{time.perf_counter() - grid_started:.0f} s", ""]
        write()

    if args.curve:
        cell = CellSpec.parse(args.curve_cell)
        lines += [f"## throughput of k replicates of {cell.name} at once", "",
                  "| k | finished | wall s | cells / hour | training steps / s (sum) | test Dice of each |",
                  "|---|---|---|---|---|---|"]
        seed = 1000
        for k in [int(k) for k in args.curve.split(",")]:
            if time.perf_counter() >= deadline:
                break
            phase = time.perf_counter()
            results = run_pool(curve_specs(cell, k, seed), args.data, runs, args.overrides, k, log_dir, deadline)
            seed += k
            wall = time.perf_counter() - phase
            done = [r for r in results if r.metrics]
            steps = sum(r.metrics["steps"] for r in done)
            dice = ", ".join(f"{r.metrics['primary']['dice_mean']:.4f}" for r in done)
            lines.append(f"| {k} | {len(done)} | {wall:.0f} | {3600 * len(done) / wall:.0f} | {steps / wall:.0f} | "
                         f"{dice} |")
            print(lines[-1], flush=True)
            write()
    lines.append(f"\ngpu-check took {time.perf_counter() - started:.0f} s")
    write()
    print("\n".join(lines))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
