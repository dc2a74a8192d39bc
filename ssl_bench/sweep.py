"""Sweeps: methods x labeled fractions x draws (x any extra config axis), each cell an ordinary run of train().

A sweep file (``experiments/sweeps/<name>.yaml``) is validated against ``SweepConfig``::

    data: hippocampus                    # experiments/data/<data>.yaml
    methods: all                         # every registered method, or a list of names
    fractions: [0.05, 0.1, 0.2]          # labeled fractions, each in (0, 1]
    n_labeled: [3, 7]                    # and/or numbers of labeled patients (folders labeled<n>)
    labeled_selections: [draw, first]    # data.labeled_selection of every cell (default [draw])
    draws: [0, 1, 2]                     # split draws
    extra_cells:                         # (method, fraction) cells outside the grid, for every draw and axis value
      - {method: supervised, fraction: 1.0}
    axes:                                # extra axes crossed with everything: dotted config key -> values
      optim.lr: [0.001, 0.002]
    overrides: [trainer.max_steps=500]   # config overrides applied to every cell
    launcher: local                      # local | slurm
    local: {jobs: 1}                     # cells at once on this machine (its CPU threads and GPUs split between them)
    slurm: {partition: gpu, gpus_per_node: 1, nodes: 1, cpus_per_task: 8, mem_gb: 32, timeout_min: 240}
    name: hippocampus                    # sweep id (default: the file's name)

A cell's folder is ``run_dir(cfg)``; a cell on an extra axis gets ``run.tag=<last key part><value>``
(e.g. ``lr0.001``, joined to any run.tag of the overrides) so that its folder differs from its neighbours'.
Resuming is train()'s: a finished cell (metrics.json present) is skipped and an interrupted one resumes
from its last checkpoint, so a sweep killed at any moment is completed by starting it again. With a records
folder (``ssl-bench sweep FILE --records results/records``, the copies ``ssl-bench report`` keeps), a cell
whose run folder is gone but whose record holds a run of the same config counts as finished too, so that a
sweep continued on another machine or disk runs only what no record holds; a record of a different config
(e.g. made before a default changed) is named and its cell runs. With a records folder, each cell's result
files are also copied there as soon as the cell finishes (replacing such a record), so that a run folder on
scratch, or on a machine that goes away, loses nothing the report needs.

Cells run draw by draw (then by extra-axis value, labeled amount and method), so the first draw is complete
first. Work shared by several cells (e.g. contrastive pretraining per dataset and draw, METHODS.md) is
an ordinary run that the method's train() produces on first use and reuses afterwards. When cells run at
once (``local.jobs`` > 1, or ``launcher: slurm``), the first cell of a draw to reach the contrastive
pretraining runs it while the draw's other contrastive cells wait on a file lock in its folder, then reuse
it (on a filesystem with working flock).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from itertools import product
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import submitit
import submitit.helpers
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ssl_bench.callbacks import INTERRUPTED_EXIT_CODE, STOPPED_EXIT_CODE
from ssl_bench.config import ConfigError, first_line, load_config, load_yaml, merge_checked, run_dir
from ssl_bench.identity import (CONFIG_FILE, METRICS_FILE, UnreadableResult, config_differences, finished_result,
                                read_metrics)
from ssl_bench.registry import get_method, method_names
from ssl_bench.report import keep_record

LAUNCHERS = ("local", "slurm")
PENDING, FINISHED, RECORDED, REFUSED = "pending", "finished", "recorded", "refused"
ALL_METHODS = "all"
# Keys a cell sets itself; an override or an extra axis on them would silently collide with the grid.
CELL_KEYS = ("data.fraction", "data.n_labeled", "data.labeled_selection", "data.draw")
# How often the slurm launcher asks the scheduler whether jobs are done (submitit caches the queries).
SLURM_POLL_S = 30.0
# How often the local launcher checks whether a running cell is done.
LOCAL_POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class SweepError(ConfigError):
    """A sweep file that cannot be run; the message names the file and the key."""


@dataclass
class ExtraCell:
    method: str
    fraction: float


@dataclass
class SlurmConfig:
    partition: str = ""  # empty: the cluster's default partition
    # One task per GPU (Lightning's SLURM DDP); 0 runs CPU-only jobs of one task.
    gpus_per_node: int = 1
    nodes: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    timeout_min: int = 240


@dataclass
class LocalConfig:
    # Cells at once on this machine, each in its own process. With jobs > 1 each cell gets cpu_count // jobs
    # threads (OMP_NUM_THREADS, unless the environment sets it) and its share of the visible GPUs
    # (CUDA_VISIBLE_DEVICES; GPUs are shared round-robin when there are fewer than jobs).
    jobs: int = 1


@dataclass
class SweepConfig:
    data: str = "hippocampus"
    methods: Any = ALL_METHODS  # "all" or a list of names: a union type, checked in _validate
    fractions: List[float] = field(default_factory=list)
    # Numbers of labeled patients (data.n_labeled), crossed with the methods like the fractions.
    n_labeled: List[int] = field(default_factory=list)
    labeled_selections: List[str] = field(default_factory=lambda: ["draw"])
    draws: List[int] = field(default_factory=lambda: [0])
    extra_cells: List[ExtraCell] = field(default_factory=list)
    axes: Dict[str, Any] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)
    launcher: str = "local"
    local: LocalConfig = field(default_factory=LocalConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    name: str = ""


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: what train() gets, and the folder it writes."""
    method: str
    data: str
    fraction: Optional[float]  # None: n_labeled patients are labeled
    draw: int
    axis_values: Tuple[Tuple[str, Any], ...]
    overrides: Tuple[str, ...]
    run_dir: Path
    # The run folder below the runs folder (<dataset>/<method>/frac<f>/draw<d>), which is also its record's path.
    relative_dir: Path = Path()
    # A record of this cell's run (same config) that stands in for a missing run folder; see the module docstring.
    record: Optional[Path] = None
    # PENDING, FINISHED (its run folder), RECORDED (its record) or REFUSED (its run folder holds a run of another
    # config), as load_sweep found it; ``note`` says why a cell is refused.
    status: str = "pending"
    note: str = ""
    force: bool = False  # --force: start over whatever its folder holds
    n_labeled: Optional[int] = None
    labeled_selection: str = "draw"

    def describe(self) -> str:
        axes = "".join(f" {key}={_text(value)}" for key, value in self.axis_values)
        amount = f"fraction={self.fraction:g}" if self.n_labeled is None else f"n_labeled={self.n_labeled}"
        selection = "" if self.labeled_selection == "draw" else f" labeled_selection={self.labeled_selection}"
        return f"method={self.method} {amount}{selection} draw={self.draw}{axes}"

    def finished(self) -> bool:
        return self.status in (FINISHED, RECORDED)

    def state(self) -> str:
        return f"recorded in {self.record}" if self.status == RECORDED else self.status

    def run_config(self):
        """The config the cell's run saves (config.yaml), without the work its method's prepare_run does."""
        return get_method(self.method).run_config(self.config())

    def start_over_if_forced(self) -> None:
        """``--force``: the cell's run folder goes before the cell starts (or is submitted), as `train --force` does."""
        if self.force and self.run_dir.exists():
            shutil.rmtree(self.run_dir)

    def config(self):
        return load_config(self.method, self.data, list(self.overrides))

    def command(self) -> List[str]:
        return [sys.executable, "-m", "ssl_bench.cli", "train", "--method", self.method, "--data", self.data,
                *self.overrides]


@dataclass
class Sweep:
    config: SweepConfig
    source: Path
    cells: List[Cell]
    # Where each cell's record is kept as soon as it finishes (--records; the module's docstring).
    records_dir: Optional[Path] = None

    def keep_record(self, cell: Cell) -> None:
        if self.records_dir is not None and (cell.run_dir / METRICS_FILE).is_file():
            keep_record(cell.run_dir, self.records_dir / cell.relative_dir)


def load_sweep(path: Path, overrides: Optional[List[str]] = None, records_dir: Optional[Path] = None,
               force: bool = False) -> Sweep:
    """The validated sweep of ``path`` with its cells and their states; ``overrides`` are applied to every cell after
    the file's. With ``records_dir``, cells whose matching record is there count as finished (the module's
    docstring). With ``force`` every cell is pending and starts over."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"no sweep file {path}")
    merged = merge_checked(OmegaConf.structured(SweepConfig), load_yaml(path), str(path))
    try:
        spec: SweepConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # e.g. an extra cell without a fraction
        raise SweepError(f"{path}: {first_line(err)}") from None
    spec.name = spec.name or path.stem
    spec.overrides = list(spec.overrides) + list(overrides or [])
    _validate(spec, path)
    if records_dir is not None and not Path(records_dir).is_dir():
        raise SweepError(f"no records folder {records_dir}")
    records = Path(records_dir) if records_dir is not None else None
    cells = [replace(cell, force=True) if force else _with_state(cell, records) for cell in _expand(spec, path)]
    return Sweep(spec, path, cells, records)


def _with_state(cell: Cell, records_dir: Optional[Path]) -> Cell:
    """``cell`` with its state: finished when its run folder holds a finished run of its config, refused when the
    folder holds a run of another config, recorded when ``records_dir`` holds a record of its config. A result that
    does not parse, or a record of another config, is reported and does not count: its cell runs."""
    cfg = cell.run_config()
    try:
        if finished_result(cell.run_dir, cfg) is not None:
            return replace(cell, status=FINISHED)
    except ConfigError as err:
        return replace(cell, status=REFUSED, note=str(err))
    except UnreadableResult as err:
        _warn(f"{err}: its cell will run (evaluated again from its last checkpoint)")
    if records_dir is None:
        return cell
    folder = records_dir / cell.relative_dir
    if not (folder / METRICS_FILE).is_file():
        return cell
    problem = _record_problem(folder, cfg)
    if problem:
        _warn(f"record {folder} {problem}: its cell will run")
        return cell
    return replace(cell, status=RECORDED, record=folder)


def _record_problem(folder: Path, cfg) -> str:
    """Why a record does not stand for a run of ``cfg`` (its result or config cannot be read, or it is another
    config's), or "" when it does."""
    try:
        read_metrics(folder / METRICS_FILE)
        if not (folder / CONFIG_FILE).is_file():
            return f"has no {CONFIG_FILE}"
        differing = config_differences(folder / CONFIG_FILE, cfg)
    except (ConfigError, UnreadableResult) as err:
        return f"is unusable ({err})"
    return f"has another config ({', '.join(differing[:8])} differ)" if differing else ""


def _warn(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


def _validate(spec: SweepConfig, path: Path) -> None:
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise SweepError(f"{path}: {key}: {msg}")

    registered = method_names()
    need(spec.methods == ALL_METHODS or (isinstance(spec.methods, list) and spec.methods), "methods",
         f"must be '{ALL_METHODS}' or a non-empty list of method names")
    need(bool(spec.fractions) or bool(spec.n_labeled), "fractions",
         "must list at least one labeled fraction (or n_labeled: numbers of labeled patients)")
    need(all(n >= 1 for n in spec.n_labeled), "n_labeled",
         f"numbers of labeled patients must be >= 1, got {spec.n_labeled}")
    need(bool(spec.labeled_selections) and set(spec.labeled_selections) <= {"draw", "first"}, "labeled_selections",
         f"must list draw and/or first, got {spec.labeled_selections}")
    cells = [("methods", "fractions", name, fraction) for name in _methods(spec)
             for fraction in spec.fractions or [1.0]]  # n_labeled only: the methods are checked all the same
    cells += [(f"extra_cells[{i}].method", f"extra_cells[{i}].fraction", c.method, c.fraction)
              for i, c in enumerate(spec.extra_cells)]
    for method_key, fraction_key, name, fraction in cells:
        need(name in registered, method_key, f"unknown method '{name}' (registered: {', '.join(registered)})")
        need(0.0 < fraction <= 1.0, fraction_key, f"labeled fraction must be in (0, 1], got {fraction}")
    need(bool(spec.draws) and min(spec.draws) >= 0, "draws", "must list at least one draw, each >= 0")
    for key, values in spec.axes.items():
        need(isinstance(values, list) and bool(values), f"axes.{key}", "must be a non-empty list of values")
        need(key not in CELL_KEYS, f"axes.{key}", "is set by the grid: use fractions / n_labeled / draws")
    short_names = [key.rsplit(".", 1)[-1] for key in spec.axes]
    need(len(set(short_names)) == len(short_names), "axes", "two keys end in the same name; run tags would clash")
    for override in spec.overrides:
        need(override.split("=", 1)[0] not in CELL_KEYS + tuple(spec.axes), "overrides",
             f"'{override}' sets a key the grid sets for each cell")
    need(spec.launcher in LAUNCHERS, "launcher", f"must be one of {', '.join(LAUNCHERS)}, got '{spec.launcher}'")
    need(spec.local.jobs >= 1, "local.jobs", f"must be >= 1, got {spec.local.jobs}")
    s = spec.slurm
    need(s.gpus_per_node >= 0 and s.nodes >= 1, "slurm", "needs gpus_per_node >= 0 and nodes >= 1")
    need(s.gpus_per_node > 0 or s.nodes == 1, "slurm.nodes", "CPU-only jobs (gpus_per_node: 0) run on one node")


def _methods(spec: SweepConfig) -> List[str]:
    return method_names() if spec.methods == ALL_METHODS else list(spec.methods)


def _expand(spec: SweepConfig, path: Path) -> List[Cell]:
    """Every cell once, in run order (draw, axis values, selection, labeled amount, method; extra cells after each
    draw's grid)."""
    amounts = [("fraction", f) for f in spec.fractions] + [("n_labeled", n) for n in spec.n_labeled]
    triples = [(amount, m, selection) for selection in spec.labeled_selections for amount in amounts
               for m in _methods(spec)] + [(("fraction", c.fraction), c.method, "draw") for c in spec.extra_cells]
    axis_keys = list(spec.axes)
    cells: Dict[Path, Cell] = {}
    for draw, axis_combo in product(spec.draws, product(*spec.axes.values())):
        axis_values = tuple(zip(axis_keys, axis_combo))
        for amount, method, selection in triples:
            cell = _cell(spec, path, method, amount, draw, axis_values, selection)
            cells.setdefault(cell.run_dir, cell)  # an extra cell that is also in the grid runs once
    return list(cells.values())


def _cell(spec: SweepConfig, path: Path, method: str, amount: Tuple[str, Any], draw: int,
          axis_values: Tuple[Tuple[str, Any], ...], selection: str = "draw") -> Cell:
    kind, count = amount  # ("fraction", f) or ("n_labeled", n)
    # The selection only where it is not the default, so that the cells of older sweeps keep their command lines.
    chosen = () if selection == "draw" else (f"data.labeled_selection={selection}",)
    # JSON is YAML, so every axis value (number, string, list) reads back as itself in a dotlist.
    overrides = (*spec.overrides, f"data.{kind}={count}", *chosen, f"data.draw={draw}",
                 f"logging.tags=[sweep={spec.name}]", *(f"{key}={json.dumps(value)}" for key, value in axis_values))
    fraction, n_labeled = (count, None) if kind == "fraction" else (None, count)
    cell = Cell(method, spec.data, fraction, draw, axis_values, overrides, run_dir=Path(), n_labeled=n_labeled,
                labeled_selection=selection)
    try:
        cfg = cell.config()
        axis_tag = "-".join(f"{key.rsplit('.', 1)[-1]}{_text(value)}" for key, value in axis_values)
        if axis_tag:
            tag = "-".join(filter(None, (cfg.run.tag, axis_tag)))
            cell = replace(cell, overrides=overrides + (f"run.tag={tag}",))
            cfg = cell.config()
    except ConfigError as err:
        raise SweepError(f"{path}: cell {cell.describe()}: {err}") from None
    folder = run_dir(cfg)
    return replace(cell, run_dir=folder, relative_dir=folder.relative_to(cfg.run.runs_dir))


def _text(value: Any) -> str:
    """An axis value in a progress line or a run tag: lists without spaces, so tags stay one word."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


class Progress:
    """``[sweep] cell k/n: ... (ETA ...)``: the wall time so far per cell of work done, times the cells left.

    A cell resumed from a checkpoint counts as the share of its steps it trained in this sweep, and a failed
    cell as none, so a sweep restarted near the end of a cell does not promise the next cells in minutes."""

    def __init__(self, n_cells: int, n_pending: int):
        self.n_cells, self.left = n_cells, n_pending
        self.started: Optional[float] = None
        self.cells_of_work = 0.0

    def line(self, k: int, cell: Cell, note: str = "") -> str:
        if self.started is None:
            self.started = time.monotonic()
        if self.cells_of_work > 0:
            per_cell = (time.monotonic() - self.started) / self.cells_of_work
            note = note or f"ETA {timedelta(seconds=round(per_cell * self.left))}"
        return f"[sweep] cell {k}/{self.n_cells}: {cell.describe()} ({note or 'ETA after the first cell'})"

    def finish_one(self, cell: Cell) -> None:
        self.cells_of_work += _share_trained_now(cell.run_dir / METRICS_FILE)
        self.left -= 1


def _share_trained_now(metrics_path: Path) -> float:
    """The share of a cell's steps this sweep trained: 1 from scratch, less when resumed, 0 when it failed."""
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return 0.0
    steps, resumed_from = metrics.get("steps") or 0, metrics.get("resumed_from_step") or 0
    return (steps - resumed_from) / steps if steps > 0 else 1.0


def run_sweep(sweep: Sweep, slurm_cluster: str = "slurm", slurm_poll_s: float = SLURM_POLL_S) -> int:
    """Runs every unfinished cell; 0 when all cells are finished. ``slurm_cluster="local"`` runs the slurm
    launcher's jobs through submitit's local executor (subprocesses on this machine)."""
    cells = sweep.cells
    n_pending = sum(c.status == PENDING for c in cells)
    n_recorded = sum(c.status == RECORDED for c in cells)
    refused = [c for c in cells if c.status == REFUSED]
    print(f"[sweep] {sweep.config.name}: {len(cells)} cells, {len(cells) - n_pending - len(refused)} already finished"
          + (f" ({n_recorded} of them recorded only)" if n_recorded else "")
          + (f", {len(refused)} refused" if refused else "") + f" ({sweep.source})", flush=True)
    try:
        if sweep.config.launcher == "local":
            failed = _run_local(cells, n_pending, job_environments(sweep.config.local.jobs), sweep.keep_record)
        else:
            failed = _run_submitit(sweep, n_pending, slurm_cluster, slurm_poll_s)
    except KeyboardInterrupt:
        print("[sweep] interrupted at once: run the same command again to resume", flush=True)
        return INTERRUPTED_EXIT_CODE
    except _Stopped as stopped:
        print(f"[sweep] stopped by {stopped.signal_name}, each running cell at the end of its step: run the same "
              "command again to resume", flush=True)
        return stopped.exit_code
    for cell in failed:
        print(f"[sweep] failed: {cell.describe()} ({cell.run_dir})", file=sys.stderr)
    for cell in refused:
        print(f"[sweep] refused: {cell.describe()}: {cell.note}", file=sys.stderr)
    return 1 if failed or refused else 0


def describe_cells(sweep: Sweep) -> str:
    """One line per cell with its state and folder (``ssl-bench sweep --dry-run``)."""
    return "\n".join(f"{k}/{len(sweep.cells)} {c.state():8} {c.describe()}  {c.run_dir}"
                     for k, c in enumerate(sweep.cells, 1))


def job_environments(jobs: int, environ: Optional[Dict[str, str]] = None, cpu_count: Optional[int] = None,
                     gpu_count: Optional[int] = None) -> List[Dict[str, str]]:
    """The environment of each of ``jobs`` job slots: one slot is this process's environment unchanged; with
    more, each gets cpu_count // jobs threads (unless OMP_NUM_THREADS is set) and its share of the visible GPUs."""
    environ = dict(os.environ if environ is None else environ)
    if jobs == 1:
        return [environ]
    cpu_count = cpu_count or os.cpu_count() or 1
    if gpu_count is None:
        import torch
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


def _run_local(cells: List[Cell], n_pending: int, slot_environments: List[Dict[str, str]],
               on_finished: Callable[[Cell], None] = lambda cell: None) -> List[Cell]:
    """Each cell in a child process of its own, as many at once as there are job slots, because:

    - train() reports peak memory from process-wide counters (ru_maxrss, CUDA peak stats), which
      in one process would carry the earlier cells' peaks into every later cell;
    - Lightning's DDP launcher starts the other ranks by re-running the current command line, which must
      then be the cell's own ``ssl-bench train``, not the whole sweep;
    - a crash or out-of-memory in one cell leaves the others running, and each cell starts clean.
    The cost, about ten seconds of imports per cell, is small beside a real run.
    """
    progress, failed = Progress(len(cells), n_pending), []
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


class _Stopped(Exception):
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

    def stopped(self) -> "_Stopped":
        if self.requested == signal.SIGINT:
            return _Stopped("Ctrl-C", INTERRUPTED_EXIT_CODE)
        return _Stopped("SIGTERM", STOPPED_EXIT_CODE)

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


class CellJob(submitit.helpers.Checkpointable):
    """A submitit job: one cell, run by every task of the job (one per GPU: Lightning's SLURM DDP).

    Checkpointable: a job that reaches its time limit or is preempted is requeued with the same cell, and
    train() resumes it from last.ckpt.
    """

    def __call__(self, cell: Cell) -> None:
        from ssl_bench.train import train
        train(cell.config())


def _slurm_overrides(slurm: SlurmConfig) -> List[str]:
    """The job's GPUs decide trainer.devices / num_nodes / strategy, whatever the sweep's overrides say."""
    if slurm.gpus_per_node == 0:
        return ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1"]
    ddp = slurm.gpus_per_node * slurm.nodes > 1
    return ["trainer.accelerator=gpu", f"trainer.devices={slurm.gpus_per_node}", f"trainer.num_nodes={slurm.nodes}",
            f"trainer.strategy={'ddp' if ddp else 'auto'}"]


def _run_submitit(sweep: Sweep, n_pending: int, cluster: str, poll_s: float) -> List[Cell]:
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
    progress, failed = Progress(len(sweep.cells), n_pending), []
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
