"""The test-selection audit: what a result gains when its checkpoint is picked on the test cases.

Public code behind several published semi-supervised results keeps the checkpoint that scores best on the test
set. ``TestSelectionAudit`` measures what that choice is worth under this benchmark's protocol: at every
validation it also scores the test cases (mean Dice of the primary model, no HD95) and keeps the best-scoring
weights as ``checkpoints/test_best-<step>.ckpt``. That checkpoint is used for nothing but its own row: train()
evaluates it on the test cases like the last and the best-on-validation checkpoints (checkpoint tag
``test_best``), and "test-selection inflation" is its Dice minus the last checkpoint's.

The audit leaves training as it is: it runs in evaluation mode without gradients, and every random state (torch,
CUDA, numpy, Python) is put back after it, so the steps, the data streams and the best-on-validation selection
are those of the same run without it (a test compares them). Its cost is the time of evaluating the test cases at
every validation; metrics.json reports it (``test_selection.seconds``, and ``cost_vs_validation``: that time over the
validations' own).

Its state (best score, step and file) is saved in every checkpoint, so a resumed run continues the selection. A
``test_best`` file is deleted only once the resume checkpoint names a newer one, so a run killed at any moment
resumes with the file its state names. Under DDP each rank scores its share of the test cases and the rows are
gathered as validation's are (the base module's stores).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.states import TrainerFn

from ssl_bench.run.callbacks import in_folder
from ssl_bench.run.evaluation import nanmean

TAG = "test_best"
STAGE = "test_selection"
FILE_PREFIX = f"{TAG}-"


@contextmanager
def random_state_kept(device: torch.device):
    """Runs the block and then restores torch's (and ``device``'s CUDA), numpy's and Python's random states:
    whatever the block draws (a DataLoader draws its base seed from torch's), the run continues unchanged."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class TestSelectionAudit(pl.Callback):
    """Scores the test cases at every validation and keeps the best-scoring checkpoint (the module's docstring)."""

    __test__ = False  # a callback, not a pytest test class

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = Path(ckpt_dir)
        self.best_dice: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_path: Optional[str] = None
        self.validations = 0
        self.first_step: Optional[int] = None  # the first validation scored (later than the first one if resumed
        self.seconds = 0.0                     # from a checkpoint written before the audit existed)
        self.validation_seconds = 0.0  # the validations' own time, to set the audit's cost against
        self._validation_started = 0.0
        self._improved = False

    # ---- state saved in every checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"best_dice": self.best_dice, "best_step": self.best_step, "best_path": self.best_path,
                "validations": self.validations, "first_step": self.first_step, "seconds": self.seconds,
                "validation_seconds": self.validation_seconds}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # Only a resumed fit continues the selection: trainer.test(ckpt_path=...) restores callbacks too.
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None or trainer.state.fn != TrainerFn.FITTING:
            return
        for key, value in state.items():
            setattr(self, key, value)
        self.best_path = in_folder(self.best_path, self.ckpt_dir)  # the run folder may have moved since

    # ---- scoring ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        started = time.perf_counter()
        self.validation_seconds += started - self._validation_started
        primary = pl_module.cfg.method.primary_model
        with random_state_kept(pl_module.device):
            loader = trainer.datamodule.test_shard_loader(trainer.global_rank, trainer.world_size)
            for batch in loader:
                pl_module.evaluate_batch(STAGE, move_data_to_device(batch, pl_module.device), with_hd=False,
                                         models=[primary])
            rows = pl_module.collect_rows(STAGE, models=[primary])[primary]
        dice = nanmean(r["dice_mean"] for r in rows)
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds += time.perf_counter() - started
        self.validations += 1
        self.first_step = trainer.global_step if self.first_step is None else self.first_step
        self._improved = not math.isnan(dice) and (self.best_dice is None or dice > self.best_dice)
        if self._improved:
            self.best_dice, self.best_step = dice, trainer.global_step
        pl_module.log("audit/test_dice_mean", dice, sync_dist=False, rank_zero_only=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # The resume checkpoint on disk (written at the previous validation) names self.best_path: others can go.
        self.delete_unreferenced(trainer)
        if self._improved:
            path = self.ckpt_dir / f"{FILE_PREFIX}{trainer.global_step}.ckpt"
            trainer.save_checkpoint(str(path), weights_only=True)
            self.best_path = str(path)
            self._improved = False

    def on_fit_end(self, trainer, pl_module) -> None:
        self.delete_unreferenced(trainer)  # the final resume checkpoint names the final best

    def delete_unreferenced(self, trainer) -> None:
        """Deletes the test_best files other than the one the state names (a stopped run's too: its resume
        checkpoint, written at the stop or at the validation that chose the best, names that one)."""
        if not trainer.is_global_zero:
            return
        for path in self.ckpt_dir.glob(f"{FILE_PREFIX}*.ckpt"):
            if str(path) != self.best_path:
                path.unlink(missing_ok=True)

    def summary(self) -> dict:
        """metrics.json's ``test_selection``: which step was best on test, at what score, and what it cost."""
        return {"best_step": self.best_step, "best_checkpoint": Path(self.best_path).name if self.best_path else None,
                "test_dice_at_selection": self.best_dice, "validations_scored": self.validations,
                "first_scored_step": self.first_step, "seconds": self.seconds,
                "seconds_per_validation": self.seconds / self.validations if self.validations else float("nan"),
                # the validations' own time over the same steps: the audit's cost as a multiple of validation's
                "validation_seconds": self.validation_seconds,
                "cost_vs_validation": (self.seconds / self.validation_seconds if self.validation_seconds
                                       else float("nan"))}
