"""What a run prints while it trains: one header line, one progress bar over the whole step budget (in a pipe or a
log file, plain lines every so many steps instead), one line with the time it measured, then (train.py) the result
table. Lightning's and W&B's own messages are kept out of it
(``quiet_lightning``), warnings that matter aside.

Also the run's CSV log: one ``csv/metrics.csv`` per run folder, continued by a resumed run.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from ssl_bench.run.labeled import LabeledAmount

# Lightning's informational messages (seed, accelerator, checkpoint restored, fit stopped, a litlogger tip).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
EXPECTED_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",  # a resumed run writes into the folder it resumes from
    # Lightning's own deprecation notice about torch internals: nothing a user can act on.
    r".*treespec, LeafSpec",
    # A step budget below trainer.log_every_n_steps (a run's budget is its one epoch): the loggers write at validation.
    r"The number of training batches \(\d+\) is smaller than the logging interval")
# Steps of this process timed before the estimate (the first ones pay for allocation and caches).
ESTIMATE_SKIP_STEPS = 1
ESTIMATE_STEPS = 3
# Seconds between two redraws of the training bar: a redraw reads the logged values (on a GPU, waiting for its queue
# to drain) and writes a line, a cost at every step when drawn at every step (results/README.md, "A run's own work at
# every step").
REDRAW_SECONDS = 0.5
# Output that is not a terminal (a pipe, a sweep's cells, a cluster job's log) keeps every redraw of a bar, whose
# counts and ETA there go stale between them: it gets plain lines instead, one per LINES_PER_BUDGET-th of the step
# budget, at least LINE_MIN_SECONDS apart (a fast run does not flood its log) and at most LINE_MAX_SECONDS (a slow
# one still says where it is), and one at the last step.
LINES_PER_BUDGET = 20
LINE_MIN_SECONDS = 10.0
LINE_MAX_SECONDS = 600.0
# The training values the bar shows, read when it is redrawn. Not logged with prog_bar=True: Lightning turns such a
# value into a Python number at every step's end, which on a GPU waits for the device's queue.
BAR_VALUES = ("train/loss", "pretrain/loss_total")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's INFO messages and the warnings a run expects are not shown; other warnings are. Around everything
    that runs a Trainer: `ssl-bench train`, `make perf`."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def validation_interval(trainer_cfg) -> int:
    """The training steps between two validations, as the run's Trainer has them (``val_check_interval``):
    trainer.val_every_n_steps, at most the step budget, so that a run shorter than it still validates, at its end."""
    return min(trainer_cfg.val_every_n_steps, trainer_cfg.max_steps)


def run_header(cfg, n_labeled: int, n_unlabeled: int, n_test: int, run: Path, resume_step: int) -> str:
    """One line: what is about to run, on what, for how long, and where."""
    d, t = cfg.data, cfg.trainer
    every = validation_interval(t)
    validation = f"validation every {every}" if every < t.max_steps else f"validation once, at step {t.max_steps}"
    cases = f"{n_labeled} labeled" + (f" + {n_unlabeled} unlabeled" if n_unlabeled else "") + " training cases"
    steps = (f"steps {resume_step + 1}-{t.max_steps} of {t.max_steps}, resuming from step {resume_step}" if resume_step
             else f"{t.max_steps} steps")
    amount = LabeledAmount.of(d).words
    protocol = f" (protocol {cfg.protocol})" if cfg.protocol else ""
    return (f"{cfg.method.name} on {d.name}{protocol}, {amount}, draw {d.draw}: {cases}, {steps}, {validation}, test "
            f"on {n_test} cases. Run folder: {run}")


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint was written at (where a run resumed from it starts)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class TimeEstimate(pl.Callback):
    """After the first few training steps of this process, one line: their median time and what it means for the
    steps left, measured here and now rather than guessed (machines, loads and methods differ by orders of
    magnitude). Validations and the final test come on top; the progress bar's ETA includes the validations."""

    def __init__(self, timer, skip: int = ESTIMATE_SKIP_STEPS, steps: int = ESTIMATE_STEPS):
        self.timer, self.skip, self.steps = timer, skip, steps
        self.line: Optional[str] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = self.timer.steps_this_process
        left = trainer.max_steps - trainer.global_step
        if self.line is not None or not trainer.is_global_zero or done < self.skip + self.steps or left <= 0:
            return  # measured already, not yet, or nothing left to estimate
        measured = self.timer.durations[-(done - self.skip):]
        per_step = statistics.median(measured)
        first = trainer.global_step - len(measured) + 1
        self.line = (f"{per_step:.3f} s/step (median of steps {first}-{trainer.global_step}): about "
                     f"{format_duration(per_step * left)} for the {left} steps left, plus validation and test")
        Tqdm.write(self.line)


class StepProgressBar(TQDMProgressBar):
    """One bar over the run's whole step budget (``trainer.max_steps``), counting optimizer steps: a resumed run
    continues it at its checkpoint's step, with the right total, and its ETA comes from this process's own rate.
    Validation has no bar of its own (its Dice shows on this one); each test pass has one, named by checkpoint.
    The bar is redrawn at most every ``redraw_seconds`` (and at the last step), not at every step.

    Not ``interactive`` (stdout is not a terminal: a pipe, a log file), there is no bar but plain lines
    (``training: step 120/2000 (6%), 0.412 s/step, ETA 12 min 55 s, train/loss=0.812``) every ``line_every`` steps
    (LINES_PER_BUDGET a budget; LINE_MIN_SECONDS, LINE_MAX_SECONDS) and at the last step, and one line per test
    pass."""

    def __init__(self, redraw_seconds: float = REDRAW_SECONDS, clock=time.monotonic, file=None,
                 interactive: Optional[bool] = None, line_every: Optional[int] = None):
        super().__init__()
        # As the console the run prints to is, wherever ``file`` is (make perf draws into the void as it would here).
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.redraw_seconds, self._clock, self._drawn, self._file = redraw_seconds, clock, -math.inf, file
        self._line_every, self._start = line_every, (0.0, 0)

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_train_tqdm(self) -> Tqdm:
        # A resumed run's bar starts at its checkpoint's step; tqdm's rate (and ETA) counts from there.
        return self._bar("training", total=self.trainer.max_steps, initial=self.trainer.global_step, smoothing=0,
                         unit="step")

    def init_test_tqdm(self) -> Tqdm:
        description = f"test ({self.trainer.lightning_module.checkpoint_tag} checkpoint)"
        total = sum(self.trainer.num_test_batches)
        if not self.interactive and not self.is_disabled:
            self._print(f"{description}: {total} cases")
        return self._bar(description, total=total, unit="case")

    def _bar(self, description: str, **kwargs) -> Tqdm:
        return Tqdm(desc=description, position=2 * self.process_position, disable=self.is_disabled or not self.interactive,
                    leave=True, dynamic_ncols=True, file=self._file or sys.stdout, bar_format=self.BAR_FORMAT, **kwargs)

    def _print(self, line: str) -> None:
        print(line, file=self._file or sys.stdout, flush=True)

    def on_train_start(self, trainer, *_):
        super().on_train_start(trainer, *_)
        self._start = (self._clock(), trainer.global_step)
        if not self.interactive:
            self._drawn = self._start[0]  # the first line after LINE_MIN_SECONDS (a bar is drawn at the first step)
            if not self.is_disabled and trainer.global_step:
                self._print(f"training: from step {trainer.global_step}/{trainer.max_steps} (resumed)")

    def on_train_epoch_start(self, trainer, *_):
        pass  # Lightning restarts the bar at each epoch with the epoch's batches: this bar spans the step budget

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.interactive:
            return self._line(trainer, pl_module)
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is None or bar.disable:
            return
        now = self._clock()
        if n < bar.total and now - self._drawn < self.redraw_seconds:
            return
        self._drawn = now
        bar.n = n
        bar.set_postfix(self.get_metrics(trainer, pl_module))

    def _line(self, trainer, pl_module) -> None:
        n, total, now = trainer.global_step, trainer.max_steps, self._clock()
        every = self._line_every or max(1, math.ceil(total / LINES_PER_BUDGET))
        since = now - self._drawn
        if self.is_disabled or (n < total and (since < LINE_MIN_SECONDS or n % every) and since < LINE_MAX_SECONDS):
            return
        self._drawn = now
        (started, first), done = self._start, n - self._start[1]
        per_step = (now - started) / done if done > 0 else math.nan
        when = (f"{format_duration(now - started)} in all" if n >= total
                else f"ETA {format_duration(per_step * (total - n))}" if done > 0 else "ETA ?")
        values = "".join(f", {k}={v:.3f}" if isinstance(v, float) else f", {k}={v}"
                         for k, v in self.get_metrics(trainer, pl_module).items())
        self._print(f"training: step {n}/{total} ({100 * n / total:.0f}%), {per_step:.3f} s/step, {when}{values}")

    def on_train_epoch_end(self, trainer, pl_module):
        pass  # the bar spans epochs: it closes when training ends

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pass  # one test loader, whose length the bar has from the start

    def get_metrics(self, trainer, pl_module):
        logged = trainer.callback_metrics
        metrics = {name: float(logged[name]) for name in BAR_VALUES if name in logged}
        metrics.update(super().get_metrics(trainer, pl_module))
        metrics.pop("v_num", None)
        return metrics


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing the run's metrics.csv: the rows logged before ``resume_step`` are kept (a
    resumed run logs the later ones again), where Lightning's writer would delete the file."""

    def __init__(self, log_dir: str, resume_step: int):
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), [r for r in reader if int(r["step"]) < self._resume_step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class RunCSVLogger(CSVLogger):
    """The run's CSV log: ``<run>/csv/metrics.csv``, one per run, however often it resumes;
    Lightning's CSVLogger would start a ``version_<n>`` folder each time."""

    def __init__(self, run: Path, resume_step: int = 0):
        super().__init__(save_dir=str(run), name="csv", version="")
        self._resume_step = resume_step

    @property
    def log_dir(self) -> str:
        return str(Path(self.root_dir))

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuedWriter:
        if self._experiment is None:
            self._experiment = _ContinuedWriter(self.log_dir, self._resume_step)
        return self._experiment
