"""Callbacks: timing of training steps, the resume checkpoint and the random state a resumed run needs (W&B image
overlays: ssl_bench/wandb_run.py). No training logic here."""

from __future__ import annotations

import random
import signal
import sys
import time
from statistics import median
from typing import Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

# The shell's code for a process ended by SIGTERM: a stopped run is neither finished (0) nor failed (1, 2).
STOPPED_EXIT_CODE = 128 + signal.SIGTERM


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
    """The whole training state written to ``path`` after every validation, to resume an interrupted run from.

    Not ModelCheckpoint(save_last=True): with a monitored metric it writes last.ckpt only at steps whose score it
    keeps (Lightning 2.6), so a run killed on a plateau resumed from its best step and redid every step since.
    Lightning writes checkpoints through a temporary file, so a kill never leaves a half-written one. Being a
    Checkpoint, it runs after the other callbacks and after the best-checkpoint callback given before it, so the
    state it saves includes their updates of this validation.
    """

    def __init__(self, path):
        self.path = str(path)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # The full state (optimizers, loops, callbacks), said explicitly; every rank calls it, the strategy writes once.
        trainer.save_checkpoint(self.path, weights_only=False)


class CheckpointOnStop(Checkpoint):
    """On SIGTERM (a cluster's preemption or time limit, ``kill``, a stopped sweep), Lightning finishes the training
    step in progress and then raises SIGTERMException; this writes the whole training state to ``path`` at the end
    of that step, where Lightning's own step checkpoints are taken and from where its resume continues exactly.
    The same command then resumes from that step instead of from the latest validation, up to
    ``trainer.val_every_n_steps`` steps earlier.

    When a validation follows the step, this leaves the checkpoint to it: if the validation completes, it saves
    the state (ResumeCheckpoint); if the stop cuts it short (Lightning checks between its batches), the previous
    validation's checkpoint stays, because a run resumed past a cut validation would never score that step for
    the best checkpoint. Single process only: under DDP the ranks see the signal at different steps, and a checkpoint (a collective)
    written by some ranks alone would hang them; a stopped DDP run resumes from its latest validation.
    """

    def __init__(self, path):
        self.path = str(path)
        self.saved_step: Optional[int] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.received_sigterm or trainer.global_step >= trainer.max_steps or trainer.world_size > 1:
            return  # not stopped, or the last step (the fit ends as usual), or DDP
        loop = trainer.fit_loop.epoch_loop
        if trainer.enable_validation and ((loop.total_batch_idx + 1) % trainer.val_check_batch == 0
                                          or loop.batch_progress.is_last_batch):
            return  # a validation is due: it starts, and either the stop cuts it short or it ends with a checkpoint
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.saved_step == trainer.global_step:
            what = f"after step {trainer.global_step}, saved to {self.path}"
        else:  # during or right after a validation, or under DDP
            what = f"at step {trainer.global_step}; {self.path} holds the latest validation's state"
        if trainer.is_global_zero:
            print(f"stopped by SIGTERM {what}; the same command resumes from it", file=sys.stderr, flush=True)


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
