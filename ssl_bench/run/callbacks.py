"""Callbacks: timing of training steps, the resume checkpoint and the random state a resumed run needs (W&B image
overlays: ssl_bench/run/wandb_logging.py). No training logic here."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from statistics import median
from typing import Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

# The shell's code for a process ended by SIGTERM: a stopped run is neither finished (0) nor failed (1, 2).
STOPPED_EXIT_CODE = 128 + signal.SIGTERM
# The shell's code for Ctrl-C: a run stopped by Ctrl-C at the end of a step, its state saved.
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT

# A run folder's checkpoints/ and its resume checkpoint there (written at every validation).
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"


class StepTimer(pl.Callback):
    """Wall-clock seconds of each training step (forward, backward, optimizer, data), and of the whole run, for
    the report.

    Its state goes into every checkpoint, so that a resumed run reports the cost of all its steps: the step
    durations of the process that wrote the checkpoint, and its wall time up to it (the time between that
    checkpoint and a kill is lost work, not counted). The first ``warmup`` steps are dropped (allocator warm-up,
    lazy initialisation).
    """

    def __init__(self, warmup: int = 5, started: Optional[float] = None):
        self.warmup = warmup
        self._durations: list = []
        self.restored_steps = 0  # steps timed before the checkpoint this process resumed from
        self._started = time.perf_counter() if started is None else started
        self._wall_time_before_resume = 0.0
        self._start = 0.0
        # On a GPU, each step's start and end are CUDA events, read once the GPU has passed them: waiting for the GPU
        # at every step (synchronize) would stop the host from queueing the next step's work meanwhile.
        self._pending: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
            self._resolve(wait=False)
        else:
            self._durations.append(time.perf_counter() - self._start)

    def _resolve(self, wait: bool) -> None:
        """Move the durations of the GPU steps that have ended (all, with ``wait``) into the list."""
        while self._pending and (wait or self._pending[0][1].query()):
            start, end = self._pending.pop(0)
            end.synchronize()
            self._durations.append(start.elapsed_time(end) / 1000.0)

    @property
    def durations(self) -> list:
        self._resolve(wait=True)
        return self._durations

    @durations.setter
    def durations(self, value: list) -> None:
        self._pending, self._durations = [], list(value)

    def state_dict(self):
        return {"durations": list(self.durations), "wall_time_s": self.wall_time_s}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Only a resumed fit continues the timing: trainer.test(ckpt_path=...) restores callbacks too, and testing
        # the best checkpoint must not rewind the run's cost to that step's.
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None or trainer.state.fn != TrainerFn.FITTING:
            return
        self.durations = list(state["durations"])
        self.restored_steps = len(self.durations)
        self._wall_time_before_resume = float(state["wall_time_s"])

    @property
    def steps_this_process(self) -> int:
        return len(self.durations) - self.restored_steps

    @property
    def wall_time_s(self) -> float:
        """Seconds since the run started, plus, for a resumed run, those of the run up to its checkpoint."""
        return self._wall_time_before_resume + time.perf_counter() - self._started

    @property
    def seconds_per_step(self) -> float:
        kept = self.durations[self.warmup:] or self.durations
        return float(median(kept)) if kept else float("nan")


class ResumeCheckpoint(Checkpoint):
    """The whole training state written to ``path`` after every validation, or, for a run without validation (the
    contrastive pretraining), every ``every_n_train_steps`` steps and at the last, to resume an interrupted run from.

    Not ModelCheckpoint(save_last=True): with a monitored metric it writes last.ckpt only at steps whose score it
    keeps (Lightning 2.6), so a run killed on a plateau resumed from its best step and redid every step since; and
    it writes ``last-v1.ckpt`` beside a last.ckpt it did not write itself (one that CheckpointOnStop saved), so a
    pretraining stopped once resumed from that stale file ever after.
    Lightning writes checkpoints through a temporary file, so a kill never leaves a half-written one. Being a
    Checkpoint, it runs after the other callbacks and after the best-checkpoint callback given before it, so the
    state it saves includes their updates of this validation.
    """

    def __init__(self, path, every_n_train_steps: Optional[int] = None):
        self.path = str(path)
        self.every_n_train_steps = every_n_train_steps

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self.every_n_train_steps:
            return
        # The full state (optimizers, loops, callbacks), said explicitly; every rank calls it, the strategy writes once.
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_train_steps and (step % self.every_n_train_steps == 0 or step >= trainer.max_steps):
            trainer.save_checkpoint(self.path, weights_only=False)


def in_folder(path: Optional[str], folder) -> Optional[str]:
    """``path``'s file name in ``folder``: where a checkpoint named in a resumed run's state is now, when its run
    folder was moved or copied (another runs folder, another machine's bundle) since that state was saved."""
    return str(Path(folder) / Path(path).name) if path else path


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose state survives a move of the run folder. Lightning restores the best score
    only when the saved folder is spelled as the current one, and keeps the best file's old path either way: a run
    resumed in a moved or copied folder then forgot its best validation score (and chose another checkpoint than an
    uninterrupted run) or evaluated a file of the old folder. Here the saved paths are taken as names in the
    current folder and the scores are restored."""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so that checkpoints written by either class restore the other's state.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict) -> None:
        saved = state_dict.get("dirpath", self.dirpath)
        if saved != self.dirpath and self.dirpath is not None:
            here = self.dirpath
            state_dict = {**state_dict, "dirpath": here,
                          "best_model_path": in_folder(state_dict.get("best_model_path"), here),
                          "kth_best_model_path": in_folder(state_dict.get("kth_best_model_path"), here),
                          "last_model_path": in_folder(state_dict.get("last_model_path"), here),
                          "best_k_models": {in_folder(k, here): v
                                            for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


class CheckpointOnStop(Checkpoint):
    """On SIGTERM (a cluster's preemption or time limit, ``kill``, a stopped sweep) or Ctrl-C, Lightning finishes the
    training step in progress and then raises SIGTERMException; this writes the whole training state to ``path`` at
    the end of that step, where Lightning's own step checkpoints are taken and from where its resume continues
    exactly. The same command then resumes from that step instead of from the latest validation, up to
    ``trainer.val_every_n_steps`` steps earlier.

    Ctrl-C (SIGINT) is turned into the same stop: during training the first one asks for a SIGTERM to this process
    rather than raising KeyboardInterrupt in the middle of a step; a second one interrupts at once, losing the steps
    since the latest checkpoint. The process then exits with 130 (the shell's code for Ctrl-C) instead of 143.

    When a validation follows the step, this leaves the checkpoint to it: if the validation completes, it saves
    the state (ResumeCheckpoint); if the stop cuts it short (Lightning checks between its batches), the previous
    checkpoint stays, because a run resumed past a cut validation would never score that step for the best
    checkpoint. Single process only: under DDP the ranks see the signal at different steps, and a checkpoint (a
    collective) written by some ranks alone would hang them; a stopped DDP run resumes from its latest validation,
    and Ctrl-C keeps Lightning's own handling there.
    """

    def __init__(self, path):
        self.path = str(path)
        self.saved_step: Optional[int] = None  # the step of the latest checkpoint this process wrote or resumed from
        self.stopped_by = "SIGTERM"
        self._previous_sigint = None

    @property
    def exit_code(self) -> int:
        return INTERRUPTED_EXIT_CODE if self.stopped_by == "Ctrl-C" else STOPPED_EXIT_CODE

    def on_train_start(self, trainer, pl_module):
        self.saved_step = trainer.global_step if trainer.ckpt_path else None
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:  # a process started to ignore Ctrl-C (e.g. `cmd &`) keeps ignoring it
                self._previous_sigint = previous
                signal.signal(signal.SIGINT, self._stop_at_step_end)

    def _stop_at_step_end(self, signum, frame) -> None:
        self.stopped_by = "Ctrl-C"
        self._restore_sigint()  # a second Ctrl-C interrupts at once
        # os.write: a signal handler must not re-enter the buffered stderr (the progress bar may be writing to it).
        os.write(2, b"\nCtrl-C: stopping at the end of this training step (Ctrl-C again to stop at once)\n")
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: the stop at the step's end

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == TrainerFn.FITTING:
            self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.received_sigterm or trainer.global_step >= trainer.max_steps or trainer.world_size > 1:
            return  # not stopped, or the last step (the fit ends as usual), or DDP
        loop = trainer.fit_loop.epoch_loop
        if trainer.enable_validation and ((loop.total_batch_idx + 1) % trainer.val_check_batch == 0
                                          or loop.batch_progress.is_last_batch):
            return  # a validation is due: it starts, and either the stop cuts it short or it ends with a checkpoint
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_fit_end(self, trainer, pl_module):
        self._restore_sigint()

    def on_exception(self, trainer, pl_module, exception):
        self._restore_sigint()
        if trainer.state.fn != TrainerFn.FITTING or not trainer.is_global_zero:
            return
        if isinstance(exception, KeyboardInterrupt):  # a second Ctrl-C, or one before training started
            self.stopped_by, how = "Ctrl-C", "interrupted at once by Ctrl-C"
        elif isinstance(exception, SIGTERMException):
            how = f"stopped by {self.stopped_by}"
        else:
            return
        if self.saved_step is None:  # before training started: the checkpoint it resumed from, or none
            resume = (f"the same command resumes from {trainer.ckpt_path}" if trainer.ckpt_path
                      else "no checkpoint was written yet: the same command starts it again")
        elif self.saved_step == trainer.global_step:
            resume = f"saved to {self.path}; the same command resumes from it"
        else:  # during or right after a validation, a second Ctrl-C, or DDP
            resume = f"the same command resumes from step {self.saved_step} ({self.path})"
        print(f"{how} after step {trainer.global_step}, {resume}", file=sys.stderr, flush=True)


class RunStopped(SystemExit):
    """A run stopped by SIGTERM or Ctrl-C with its state saved (CheckpointOnStop): neither finished nor failed. Its
    code is the shell's for the signal (143, 130), which the process exits with."""


def fit_stoppably(trainer: pl.Trainer, stop: CheckpointOnStop, *args, **kwargs) -> None:
    """``trainer.fit(*args, **kwargs)``; a stop by SIGTERM or Ctrl-C (Lightning's SIGTERMException, whose exit code
    would be 0) raises RunStopped with the stop's code."""
    try:
        trainer.fit(*args, **kwargs)
    except SIGTERMException:
        raise RunStopped(stop.exit_code) from None


class TrainingRandomState(pl.Callback):
    """Puts into every checkpoint the random state the next training step starts from (torch's, for dropout masks,
    input noise and augmentation drawn in the step; numpy's and Python's), and restores it when a single-process
    run resumes, as training starts. With data streams that a resumed run continues where they stopped
    (ssl_bench/data/stream.py; the contrastive pretraining's batches), the run then computes what an uninterrupted
    one computes. Under DDP each rank has a random state of its own and only one is saved, so none is restored."""

    def __init__(self):
        self._restored_random_state = None

    def state_dict(self):
        # Tensors and plain Python values only, so that checkpoints still load with torch.load(weights_only=True).
        _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {"random_state": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                 "numpy": (torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                                           float(cached_gaussian)),
                                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def load_state_dict(self, state_dict):
        self._restored_random_state = state_dict.get("random_state")

    def on_train_start(self, trainer, pl_module):
        state, self._restored_random_state = self._restored_random_state, None
        if state is None or trainer.world_size > 1:
            return
        torch.set_rng_state(state["torch"])
        keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        random.setstate(state["python"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
