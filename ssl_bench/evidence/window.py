"""``make gpu-evidence``: one GPU window, however short, turned into records and a state the next window resumes.

Inside ``--budget`` seconds (counted from the command's start): unpack ``--bundle`` (an earlier window's OUT) if
given, run the queue's short gpu-check, then the queue's unfinished cells in its order, several at once (``pack``),
each an ordinary ``ssl-bench train`` process writing under ``--work``. When the budget nears its end the running
cells get a SIGTERM: each finishes its training step, saves its whole state there (CheckpointOnStop), scores its
selected checkpoints (run.score_on_stop) and exits; one still running ``stop_grace_s`` later is killed and resumes
from its latest validation. Then the bundle is written to ``--out`` (ssl_bench/evidence/bundle.py) and checked
against the way back's limits.

Before any cell starts, each pending cell's resumable state is estimated from its networks and optimizer; a cell
whose state could never travel back fails the command at once, naming it. Run folders are under ``--work`` (default
runs/evidence); a carried one resumes anywhere, its selection of the best checkpoint included (BestCheckpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, TextIO

import torch

from ssl_bench.run.callbacks import CHECKPOINTS, LAST
from ssl_bench.config import ConfigError, data_root, data_roots, load_config, resolve_project_path
from ssl_bench.data.compact import COMPACT_SUFFIX, copy_note, unpack_dataset
from ssl_bench.data.dataset import resolve_dataset
from ssl_bench.data.manifest import DATA_ROOT_ENV, load_manifest
from ssl_bench.evidence.bundle import (CHECK_TABLE, LOG, MiB, check_bundle, state_capacity, unpack_bundle,
                                       write_bundle)
from ssl_bench.evidence.carry import SOURCE_FILE
from ssl_bench.evidence.queue import Queue, load_queue, queue_path
from ssl_bench.tools.gpu_check import device_name
from ssl_bench.run.identity import METRICS_FILE
from ssl_bench.run.console import checkpoint_step
from ssl_bench.run.provenance_entry import SOURCE_COMMIT_ENV, git_state
from ssl_bench.records import keep_record
from ssl_bench.registry import get_method
from ssl_bench.sweep.local import STOPPED_RETURN_CODES, job_environments
from ssl_bench.sweep.spec import Cell

DEFAULT_BUDGET_S = 480.0  # one 10-minute command with room for a rerun in a 15-minute lease
DEFAULT_WORK = Path("runs") / "evidence"
# Seconds kept after the cells stop for writing and checking the bundle.
BUNDLE_RESERVE_S = 15.0
POLL_S = 0.5
# Optimizer state kept per trained parameter: SGD's momentum buffer; AdamW's two moments.
OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}
# A checkpoint's bytes beyond its tensors (loop and callback state, names, pickling), generously.
CHECKPOINT_OVERHEAD_BYTES = 1 * MiB
LOG_TAIL_LINES = 25


def estimated_state_bytes(cfg) -> int:
    """The size of a cell's last.ckpt (weights, buffers and optimizer state), from its networks as built."""
    manifest, _ = resolve_dataset(cfg)
    module = get_method(cfg.method.name)(cfg, class_names=manifest.labels, case_ids=[c.id for c in manifest.cases])
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return weights + OPTIMIZER_SLOTS[cfg.optim.name] * trained + CHECKPOINT_OVERHEAD_BYTES


# Overrides that choose a cell's labeled cases, seed or folders: cells that differ only in them have states alike.
SAME_STATE_KEYS = ("data.fraction=", "data.n_labeled=", "data.labeled_selection=", "data.draw=", "trainer.seed=",
                   "run.", "logging.")


def state_key(cell: Cell) -> tuple:
    """What a cell's state size depends on: its method, dataset and the overrides that may change its networks."""
    return (cell.method, cell.data, tuple(o for o in cell.overrides if not o.startswith(SAME_STATE_KEYS)))


@dataclass
class Running:
    cell: Cell
    process: subprocess.Popen
    log: TextIO
    started: float
    state_bytes: int


class WindowLog:
    """The window's own lines, timed from its start: printed and written to the bundle's log as they come."""

    def __init__(self, file: TextIO, started: float):
        self.file, self.started = file, started

    def say(self, line: str) -> None:
        line = f"[evidence {time.monotonic() - self.started:6.0f} s] {line}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


class Window:
    def __init__(self, queue: Queue, out: Path, work: Path, budget_s: float, log: WindowLog):
        self.queue, self.out, self.work, self.budget_s, self.log = queue, out, work, budget_s, log
        self.started, self.say = log.started, log.say
        self.logs = work / "logs"
        self.finished: List[str] = []
        self.failed: List[dict] = []

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def run_check(self, check, python: str) -> None:
        seconds = min(check.budget_s, self.left() - BUNDLE_RESERVE_S - self.queue.config.stop_grace_s)
        if seconds <= 0:
            self.say("gpu-check skipped: no budget left for it")
            return
        command = [python, "-m", "ssl_bench.tools.gpu_check", "--data", check.data, "--cells", "", "--perf-methods",
                   ",".join(check.methods), "--perf-steps", str(check.steps), "--budget-s", str(seconds),
                   "--runs", str(self.work / "gpu-check"), "--out", str(self.out / CHECK_TABLE), *check.overrides]
        self.say(f"gpu-check: {', '.join(check.methods)} on {check.data}, {check.steps} steps each, at most "
                 f"{seconds:.0f} s")
        with open(self.logs / "gpu-check.log", "w") as log:
            try:
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=seconds)
                self.say(f"gpu-check ended (exit {done.returncode}): {self.out / CHECK_TABLE}")
            except subprocess.TimeoutExpired:
                self.say(f"gpu-check stopped after {seconds:.0f} s: its table holds what it measured")

    def run_cells(self, pending: List[Cell], estimates: Dict[tuple, int], pack: int, capacity: int) -> None:
        environments = job_environments(pack)
        config = self.queue.config
        stop_at = self.budget_s - BUNDLE_RESERVE_S - config.stop_grace_s  # seconds from the start
        running: List[Running] = []
        stopping_since: Optional[float] = None
        while pending or running:
            elapsed = time.monotonic() - self.started
            if stopping_since is None and elapsed >= stop_at and running:
                stopping_since = elapsed
                self.say(f"budget: stopping {len(running)} running cell(s) at the end of their step")
                for r in running:
                    r.process.send_signal(signal.SIGTERM)
            if stopping_since is not None and elapsed - stopping_since > config.stop_grace_s:
                for r in running:
                    if r.process.poll() is None:
                        self.say(f"{r.cell.describe()}: still running {config.stop_grace_s:.0f} s after the stop: "
                                 "killed (it resumes from its latest validation)")
                        r.process.kill()
            while (pending and stopping_since is None and len(running) < pack
                   and stop_at - elapsed >= config.min_start_s):
                cell = pending[0]
                state = estimates[state_key(cell)]
                if running and sum(r.state_bytes for r in running) + state > capacity:
                    break  # every running cell's state must fit the bundle: wait for one to end
                pending.pop(0)
                slot = len(running) % len(environments)
                log = open(self.logs / (str(cell.relative_dir).replace("/", "__") + ".log"), "a")
                process = subprocess.Popen(cell.command(), env=environments[slot], stdout=log, stderr=subprocess.STDOUT)
                running.append(Running(cell, process, log, time.monotonic(), state))
                self.say(f"start {cell.describe()} ({len(running)} running)")
            if not running:
                if pending and (stopping_since is not None or stop_at - elapsed < config.min_start_s):
                    self.say(f"budget: {len(pending)} cell(s) not started")
                    break
                continue
            time.sleep(POLL_S)
            for r in [r for r in running if r.process.poll() is not None]:
                running.remove(r)
                r.log.close()
                self._ended(r)

    def _ended(self, r: Running) -> None:
        code, seconds = r.process.returncode, time.monotonic() - r.started
        if code == 0 and (r.cell.run_dir / METRICS_FILE).is_file():
            keep_record(r.cell.run_dir, self.work / "records" / r.cell.relative_dir)
            metrics = json.loads((r.cell.run_dir / METRICS_FILE).read_text())
            self.finished.append(str(r.cell.relative_dir))
            self.say(f"finished {r.cell.describe()} in {seconds:.0f} s: {1 / metrics['seconds_per_step']:.1f} steps/s, "
                     f"test Dice {metrics['primary']['dice_mean']:.4f}")
        elif code in STOPPED_RETURN_CODES or code == -signal.SIGKILL:
            self.say(f"stopped {r.cell.describe()} after {seconds:.0f} s (exit {code})")
        else:
            tail = Path(r.log.name).read_text().splitlines()[-LOG_TAIL_LINES:]
            self.failed.append({"cell": str(r.cell.relative_dir), "exit": code})
            self.say(f"FAILED {r.cell.describe()} (exit {code}); the end of its log:\n    " + "\n    ".join(tail))

    def unfinished(self, cells: List[Cell]) -> List[tuple]:
        """(relative folder, step) of each queued cell with a resumable state and no result, in queue order."""
        found = []
        for cell in cells:
            last = cell.run_dir / CHECKPOINTS / LAST
            if last.is_file() and not (cell.run_dir / METRICS_FILE).is_file():
                found.append((str(cell.relative_dir), checkpoint_step(last)))
        return found


def use_carry(carry: Path) -> List[str]:
    """Prepares this machine from a carried folder (ssl_bench/evidence/carry.py): the commit the project was carried
    at, for the runs' provenance, and each compact dataset unpacked into the first data root where it is missing."""
    said = []
    source = carry / SOURCE_FILE
    if source.is_file() and git_state()[0] is None:  # a copy without git history: say what it was carried at
        state = json.loads(source.read_text())
        if state.get("git_commit"):
            os.environ[SOURCE_COMMIT_ENV] = f"{state['git_commit']}:{str(bool(state.get('git_dirty'))).lower()}"
            said.append(f"project carried at commit {state['git_commit']}" + (" (with changes)" if state.get("git_dirty") else ""))
    root = data_roots(os.environ.get(DATA_ROOT_ENV, "") or "data")[0]
    for compact in sorted((carry / "data").glob(f"*{COMPACT_SUFFIX}")):
        name = compact.name[:-len(COMPACT_SUFFIX)]
        cfg = load_config("supervised", name, ["logging.wandb=false"])
        manifest = load_manifest(resolve_project_path(cfg.data.manifest))
        present = data_root(cfg, manifest.directory)
        if present is not None and (present / manifest.directory).is_dir() and copy_note(present / manifest.directory) is None:
            said.append(f"data {name}: the original in {present / manifest.directory}; the carried copy is not used")
            continue
        folder = unpack_dataset(compact, manifest, root)
        said.append(f"data {name}: {folder} ({copy_note(folder)['note']})")
    return said


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-bench evidence run", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", default="default", help="experiments/queues/<name>.yaml, or a path")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds in all (default %(default)s)")
    parser.add_argument("--out", required=True, help="the bundle's folder (at most 8 files come back)")
    parser.add_argument("--bundle", help="an earlier window's OUT, to go on from")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="relative folder of the run folders and records")
    parser.add_argument("--records", default="results/records", help="committed records: their cells never run")
    parser.add_argument("--pack", type=int, default=None, help="cells at once (overrides the queue's pack)")
    parser.add_argument("--no-check", action="store_true", help="skip the queue's gpu-check")
    parser.add_argument("--carry", help="the folder `ssl-bench evidence carry` prepared: its data is unpacked into "
                        "the first data root where missing, its commit recorded")
    parser.add_argument("overrides", nargs="*", help="config overrides of every cell")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    out, work = Path(args.out), Path(args.work)
    if args.bundle and Path(args.bundle).resolve() == out.resolve():
        raise ConfigError(f"--out {out} is --bundle: write the new bundle into another folder")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty: the bundle's files would mix with what is there")
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("runs", "records", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    with open(out / LOG, "w") as file:
        log = WindowLog(file, started)
        log.say(f"window on {device_name()}, budget {args.budget:.0f} s, queue {args.queue}")
        if args.carry:
            for line in use_carry(Path(args.carry)):
                log.say(line)
        resumed = None
        if args.bundle:
            resumed = unpack_bundle(Path(args.bundle), work / "records", work / "runs")
            log.say(f"resumed {args.bundle}: {len(resumed.get('finished_so_far', []))} cell(s) recorded, "
                    f"{len(resumed['carried'])} carried unfinished")
        overrides = [f"run.runs_dir={work / 'runs'}", "run.score_on_stop=true", "logging.wandb=false",
                     "trainer.enable_progress_bar=false", *args.overrides]
        queue = load_queue(queue_path(args.queue), overrides, [Path(args.records), work / "records"])
        window = Window(queue, out, work, args.budget, log)
        for line in queue.skipped:
            window.say(f"skipped {line}")
        pending = [c for c in queue.cells if not c.finished()]
        window.say(f"{len(queue.cells)} cells queued, {len(queue.cells) - len(pending)} finished, {len(pending)} to run")
        capacity = state_capacity(0)
        estimates = {}
        for cell in pending:
            key = state_key(cell)
            if key not in estimates:
                estimates[key] = estimated_state_bytes(cell.config())
            if estimates[key] > capacity:
                raise ConfigError(f"{cell.describe()}: its resumable state is about "
                                  f"{estimates[key] / MiB:.0f} MiB, more than a bundle carries "
                                  f"({capacity / MiB:.0f} MiB): run it where it can finish (make sweep)")
        cuda = torch.cuda.is_available()
        pack = args.pack or queue.config.pack or (min(queue.config.max_pack, max(1, len(pending))) if cuda else 1)
        if queue.config.check is not None and not args.no_check:
            window.run_check(queue.config.check, sys.executable)
        window.say(f"cells: {pack} at once")
        window.run_cells(pending, estimates, pack, capacity)
        unfinished = window.unfinished(queue.cells)
        commit, dirty = git_state()
        info = {"queue": queue.name, "device": device_name(), "budget_s": args.budget,
                        "git_commit": commit, "git_dirty": dirty,
                "finished_this_window": window.finished, "failed": window.failed,
                "finished_so_far": sorted(str(p.parent.relative_to(work / "records"))
                                          for p in (work / "records").rglob(METRICS_FILE)),
                "resumed_from": (resumed or {}).get("files")}
        manifest = write_bundle(out, work / "records", work / "runs", unfinished, info)
        for dropped in manifest["dropped"]:
            window.say(f"not carried: {dropped['cell']} at step {dropped['step']}: {dropped['why']}")
        window.say(f"bundle: {len(window.finished)} finished this window, {len(manifest['finished_so_far'])} recorded "
                   f"so far, {len(manifest['carried'])} carried unfinished "
                   + ", ".join(f"{c['cell']} at step {c['step']}" for c in manifest["carried"]))
    problems = check_bundle(out)
    if problems:
        print("\n".join(["ssl-bench evidence: the bundle breaks the way back's limits:", *problems]), file=sys.stderr)
        return 2
    return 1 if window.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
