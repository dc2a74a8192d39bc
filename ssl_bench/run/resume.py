"""Which checkpoint an interrupted run resumes from, and a clear way on when it cannot be read.

A run resumes from its ``last.ckpt``. When that file cannot be resumed from (empty, cut short by a full disk or a
copy, not a checkpoint), the run stops before training with an error that names the file and what is wrong with it,
and says how to go on: resume from the newest intact checkpoint of the run (``--resume-from newest``, or
``--resume-from <file>`` for one of the run's own checkpoints, e.g. its ``best-<step>.ckpt``, which holds the whole
training state of a validation), or start over with ``--force``. Resuming from another file first moves the
unreadable last.ckpt aside (``last.ckpt.unreadable``: nothing written is deleted) and copies the chosen checkpoint to
last.ckpt, so that the run, stopped again before its next validation, resumes from it too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

from ssl_bench.utils.errors import ExplainedError

LAST = "last.ckpt"
NEWEST = "newest"
UNREADABLE_SUFFIX = ".unreadable"
# What a checkpoint holds when it was written with the whole training state (trainer.save_checkpoint).
TRAINING_STATE_KEYS = ("state_dict", "global_step", "loops", "optimizer_states")


class CheckpointError(ExplainedError, ValueError):
    """A checkpoint a run cannot resume from; the message names the file and how to go on."""


def inspect_checkpoint(path: Path) -> Tuple[Optional[int], Optional[str]]:
    """(its step, None) for a checkpoint a run can resume from, else (None, what is wrong with it)."""
    import torch  # here, so that the command line's error handling does not import it
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, "is empty"
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the run's own file
    except Exception as err:  # torch.load fails in several ways on a cut or foreign file
        detail = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        return None, f"cannot be read as a checkpoint ({detail})"
    missing = [key for key in TRAINING_STATE_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        return None, f"holds no training state to resume from (no {', '.join(missing)})"
    return int(checkpoint["global_step"]), None


def intact_checkpoints(folder: Path) -> List[Tuple[int, Path]]:
    """The checkpoints in ``folder`` a run can resume from, as (step, path), newest first (last.ckpt first among
    those of one step)."""
    found = [(step, path) for step, path in ((inspect_checkpoint(p)[0], p) for p in Path(folder).glob("*.ckpt"))
             if step is not None]
    return sorted(found, key=lambda found: (-found[0], found[1].name != LAST, found[1].name))


def resume_point(last: Path, requested: Optional[str] = None, option: Optional[str] = "--resume-from") -> Optional[Path]:
    """The checkpoint to resume the run of ``last`` (its checkpoints/last.ckpt) from: None for a run that has none
    yet, else ``last``, after putting the ``requested`` checkpoint there (``NEWEST``, or the path of one in the same
    folder). CheckpointError naming the file and the way on when last.ckpt, or the requested checkpoint, cannot be
    resumed from; ``option`` is the command-line option that requests one (None: there is none to offer)."""
    last = Path(last)
    folder = last.parent
    if requested is None:
        if not last.exists():
            return None
        problem = inspect_checkpoint(last)[1]
        if problem is None:
            return last
        raise CheckpointError(f"{last} {problem}. " + _way_on(last, option))
    if requested == NEWEST:
        intact = intact_checkpoints(folder) if folder.is_dir() else []
        if not intact:
            raise CheckpointError(f"no checkpoint in {folder} can be resumed from: start the run over with --force")
        chosen = intact[0][1]
    else:
        chosen = Path(requested)
        if not chosen.exists() or chosen.resolve().parent != folder.resolve():
            raise CheckpointError(f"{option} {requested}: not one of this run's checkpoints (in {folder})")
        problem = inspect_checkpoint(chosen)[1]
        if problem is not None:
            raise CheckpointError(f"{chosen} {problem}. " + _way_on(last, option, skip=chosen))
    if chosen.resolve() == last.resolve():
        return last
    if last.exists():
        if inspect_checkpoint(last)[1] is None:
            raise CheckpointError(f"{option} {requested}: {last} can be resumed from, and is what the same command "
                                  f"without {option} resumes from")
        unreadable = last.with_name(last.name + UNREADABLE_SUFFIX)
        os.replace(last, unreadable)
        print(f"{last} cannot be resumed from: kept as {unreadable}", flush=True)
    _copy(chosen, last)
    print(f"resuming from {chosen}, copied to {last}", flush=True)
    return last


def _way_on(last: Path, option: Optional[str], skip: Optional[Path] = None) -> str:
    intact = [(step, path) for step, path in intact_checkpoints(last.parent) if path != skip and path != last]
    if not intact:
        return "No other checkpoint of the run can be resumed from: start the run over with --force."
    step, path = intact[0]
    if option is None:
        return (f"Its newest intact checkpoint is {path} (step {step}): move {last} aside and copy that one to it, "
                "then run the same command again; or delete the run's folder to start it over.")
    return (f"Its newest intact checkpoint is {path} (step {step}): run the same command with {option} {path} "
            f"(or {option} {NEWEST}) to resume from it, or with --force to start the run over.")


def _copy(source: Path, target: Path) -> None:
    """A copy that a kill midway never leaves half-written."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
