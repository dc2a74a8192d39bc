"""``make gpu-check``: what this stack does on the GPU in front of you, in one command of a few minutes.

1. ``make perf`` on the GPU: the supervised step through the stack against a bare PyTorch loop, and every method's
   step against its analytic minimum (ssl_bench/perf.py).
2. A mini-grid of real cells (the protocol's 2000 steps, validation and test), several at once on the one GPU, each
   an ordinary ``ssl-bench train`` process: device, steps/s, wall seconds, peak GPU memory and test Dice per cell.
3. Optionally (``--curve 1,2,4,8``) the throughput of k identical cells sharing the GPU (training-seed replicates
   of one cell), for each k: cells per hour and training steps per second summed over the cells.

Needs nothing but this repository and the data root (no internet, no W&B). The table is printed and written to
``--out`` (default ``gpu-check.md`` in the runs folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

# The grid the issue asks for at least: three methods of very different cost at 10% labels, draw 0.
DEFAULT_CELLS = ("supervised:0.1:0", "mean_teacher:0.1:0", "co_training:0.1:0")
# Execution keys every cell gets: no W&B, no progress bar (several cells share one terminal).
QUIET = ("logging.wandb=false", "trainer.enable_progress_bar=false")


def device_name() -> str:
    import torch
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{names[0]}" + (f" (x{len(names)})" if len(names) > 1 else "")
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


@dataclass
class CellResult:
    name: str
    metrics: Optional[dict]
    wall_s: float
    returncode: int

    def row(self, device: str) -> str:
        m = self.metrics
        if m is None:
            return f"| {device} | {self.name} | failed (exit {self.returncode}) | | {self.wall_s:.0f} | | |"
        steps_per_s = 1.0 / m["seconds_per_step"] if m.get("seconds_per_step") else float("nan")
        return (f"| {device} | {self.name} | {steps_per_s:.1f} | {m['wall_time_s']:.0f} | {self.wall_s:.0f} | "
                f"{m['peak_memory_mb']:.0f} | {m['primary']['dice_mean']:.4f} |")


def parse_cell(text: str):
    method, fraction, draw = text.split(":")
    return method, float(fraction), int(draw)


def cell_command(method: str, fraction: float, draw: int, data: str, runs: Path, overrides: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "ssl_bench.cli", "train", "--method", method, "--data", data,
            f"data.fraction={fraction}", f"data.draw={draw}", f"run.runs_dir={runs}", *QUIET, *overrides]


def run_at_once(commands: List[List[str]], names: List[str], log_dir: Path, metrics_paths: List[Path]) -> \
        List[CellResult]:
    """Every command in a process of its own, all at once, threads split between them; their results."""
    from ssl_bench.sweep import job_environments
    environments = job_environments(len(commands))
    started = time.perf_counter()
    children = []
    for name, command, env in zip(names, commands, environments):
        log = open(log_dir / f"{name.replace(' ', '_').replace('=', '')}.log", "w")
        children.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    for (child, log), name, path in zip(children, names, metrics_paths):
        child.wait()
        log.close()
        metrics = json.loads(path.read_text()) if child.returncode == 0 and path.is_file() else None
        results.append(CellResult(name, metrics, time.perf_counter() - started, child.returncode))
    return results


def metrics_path(runs: Path, data: str, method: str, fraction: float, draw: int, tag: str = "") -> Path:
    folder = method + (f"-{tag}" if tag else "")
    return runs / data / folder / f"frac{float(fraction)}" / f"draw{draw}" / "metrics.json"


def grid(cells: List[str], data: str, runs: Path, overrides: Sequence[str], log_dir: Path) -> List[CellResult]:
    parsed = [parse_cell(c) for c in cells]
    commands = [cell_command(m, f, d, data, runs, overrides) for m, f, d in parsed]
    paths = [metrics_path(runs, data, m, f, d) for m, f, d in parsed]
    return run_at_once(commands, [f"{m} {f:g} d{d}" for m, f, d in parsed], log_dir, paths)


def curve(counts: List[int], cell: str, data: str, runs: Path, overrides: Sequence[str], log_dir: Path) -> List[str]:
    """k replicates (trainer.seed) of one cell at once, for each k: their wall time and summed throughput."""
    method, fraction, draw = parse_cell(cell)
    rows, seed = [], 1000
    for k in counts:
        commands, paths, names = [], [], []
        for _ in range(k):
            tag = f"seed{seed}"
            commands.append(cell_command(method, fraction, draw, data, runs,
                                         [*overrides, f"trainer.seed={seed}", f"run.tag={tag}"]))
            paths.append(metrics_path(runs, data, method, fraction, draw, tag))
            names.append(f"{method} {fraction:g} d{draw} {tag}")
            seed += 1
        started = time.perf_counter()
        results = run_at_once(commands, names, log_dir, paths)
        wall = time.perf_counter() - started
        done = [r for r in results if r.metrics]
        steps = sum(r.metrics["steps"] for r in done)
        dice = ", ".join(f"{r.metrics['primary']['dice_mean']:.4f}" for r in done)
        rows.append(f"| {k} | {len(done)} | {wall:.0f} | {3600 * len(done) / wall:.0f} | {steps / wall:.0f} | {dice} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hippocampus")
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS),
                        help="method:fraction:draw, comma-separated (default: %(default)s); all run at once")
    parser.add_argument("--perf-steps", type=int, default=20, help="timed steps per method in the perf part")
    parser.add_argument("--no-perf", action="store_true", help="skip the perf part")
    parser.add_argument("--curve", default="", help="e.g. 1,2,4,8: throughput of that many replicate cells at once")
    parser.add_argument("--curve-cell", default="supervised:0.1:0")
    parser.add_argument("--runs", default=None, help="runs folder (default: a new temporary folder)")
    parser.add_argument("--out", default=None, help="table file (default: <runs>/gpu-check.md)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every cell and the perf part")
    args = parser.parse_args(argv)
    runs = Path(args.runs or tempfile.mkdtemp(prefix="ssl-bench-gpu-check-")).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else runs / "gpu-check.md"
    device = device_name()
    lines = [f"# gpu-check on {device}", ""]
    started = time.perf_counter()

    def write():
        out.write_text("\n".join(lines) + "\n")
        print(f"\nwrote {out}", flush=True)

    if not args.no_perf:
        perf = subprocess.run([sys.executable, "-m", "ssl_bench.perf", "--data", args.data, "--steps",
                               str(args.perf_steps), *args.overrides], capture_output=True, text=True)
        print(perf.stdout[-6000:], perf.stderr[-3000:] if perf.returncode else "", flush=True)
        table = perf.stdout[perf.stdout.find("\ndevice:"):].strip() if "\ndevice:" in perf.stdout else perf.stdout
        lines += ["## perf", "", "```", table or f"perf failed (exit {perf.returncode})", "```", ""]
        write()
    log_dir = runs / "logs"
    log_dir.mkdir(exist_ok=True)
    cells = [c for c in args.cells.split(",") if c]
    if cells:
        results = grid(cells, args.data, runs, args.overrides, log_dir)
        lines += [f"## {len(cells)} cells at once ({args.data}; overrides: {' '.join(args.overrides) or 'none'})", "",
                  "| device | cell | steps/s | wall s (cell) | wall s (since grid start) | peak memory MiB | test Dice |",
                  "|---|---|---|---|---|---|---|"] + [r.row(device) for r in results] + [""]
        write()
    if args.curve:
        counts = [int(k) for k in args.curve.split(",")]
        lines += [f"## throughput of k replicates of {args.curve_cell} at once", "",
                  "| k | finished | wall s | cells / hour | steps / s (sum) | test Dice of each |",
                  "|---|---|---|---|---|---|"] + curve(counts, args.curve_cell, args.data, runs, args.overrides,
                                                       log_dir) + [""]
    lines.append(f"gpu-check took {time.perf_counter() - started:.0f} s")
    print("\n".join(lines))
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
