"""Which checkpoint an interrupted run resumes from (ssl_bench/run/resume.py): an unreadable last.ckpt is named with the
way on, and a run resumes from the newest intact checkpoint only when asked to."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ssl_bench.run.callbacks import BestCheckpoint
from ssl_bench.run.resume import (CheckpointError, inspect_checkpoint, intact_checkpoints, resume_point)


def _checkpoint(path, step):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step, "loops": {},
                "optimizer_states": []}, path)
    return path


@pytest.fixture
def run(tmp_path):
    """A run's checkpoints folder: best-2.ckpt, best-4.ckpt (an older run's leftover kind) and last.ckpt at step 6."""
    folder = tmp_path / "checkpoints"
    _checkpoint(folder / "best-2.ckpt", 2)
    _checkpoint(folder / "best-4.ckpt", 4)
    return _checkpoint(folder / "last.ckpt", 6)


def _damage(path, how):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"not a checkpoint" * 8, "empty": b""}[how])


@pytest.mark.parametrize("how, problem", [("truncated", "cannot be read as a checkpoint ("),
                                          ("garbage", "cannot be read as a checkpoint ("), ("empty", "is empty")])
def test_an_unreadable_last_checkpoint_is_named_with_the_newest_intact_one(run, how, problem):
    assert resume_point(run) == run and inspect_checkpoint(run) == (6, None)
    _damage(run, how)
    assert inspect_checkpoint(run)[1].startswith(problem)
    with pytest.raises(CheckpointError) as err:
        resume_point(run)
    best = run.with_name("best-4.ckpt")
    assert str(err.value).startswith(f"{run} {problem}")
    assert str(err.value).endswith(f"Its newest intact checkpoint is {best} (step 4): run the same command with "
                                   f"--resume-from {best} (or --resume-from newest) to resume from it, or with "
                                   "--force to start the run over.")


def test_resuming_from_the_newest_intact_checkpoint_keeps_the_unreadable_one(run):
    _damage(run, "truncated")
    damaged = run.read_bytes()
    assert resume_point(run, "newest") == run
    assert inspect_checkpoint(run) == (4, None) and run.with_name("last.ckpt.unreadable").read_bytes() == damaged
    assert resume_point(run) == run  # stopped again before its next validation: resumes from it as usual
    assert [path.name for _, path in intact_checkpoints(run.parent)] == ["last.ckpt", "best-4.ckpt", "best-2.ckpt"]


def test_a_named_checkpoint_must_be_the_runs_own_intact_one(run, tmp_path):
    elsewhere = _checkpoint(tmp_path / "other" / "best-9.ckpt", 9)
    with pytest.raises(CheckpointError, match="not one of this run's checkpoints"):
        resume_point(run, str(elsewhere))
    with pytest.raises(CheckpointError, match="last.ckpt can be resumed from, and is what the same command"):
        resume_point(run, str(run.with_name("best-2.ckpt")))  # no going back past an intact last.ckpt
    _damage(run, "garbage")
    _damage(run.with_name("best-4.ckpt"), "empty")
    with pytest.raises(CheckpointError, match="best-4.ckpt is empty. Its newest intact checkpoint is .*best-2.ckpt"):
        resume_point(run, str(run.with_name("best-4.ckpt")))
    assert resume_point(run, str(run.with_name("best-2.ckpt"))) == run and inspect_checkpoint(run)[0] == 2


def test_without_an_intact_checkpoint_the_way_on_is_to_start_over(run, tmp_path):
    for path in run.parent.glob("*.ckpt"):
        _damage(path, "empty")
    torch.save({"state_dict": {}}, run.with_name("weights-only.ckpt"))  # not a training state
    assert inspect_checkpoint(run.with_name("weights-only.ckpt"))[1] == (
        "holds no training state to resume from (no global_step, loops, optimizer_states)")
    with pytest.raises(CheckpointError, match="No other checkpoint of the run can be resumed from: start the run "
                                              "over with --force"):
        resume_point(run)
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be resumed from: start the run over"):
        resume_point(run, "newest")
    assert resume_point(tmp_path / "fresh" / "checkpoints" / "last.ckpt") is None


def test_a_stage_without_the_option_is_told_how_to_put_the_intact_checkpoint_in_place(run):
    _damage(run, "truncated")
    with pytest.raises(CheckpointError, match=f"move {run} aside and copy that one to it"):
        resume_point(run, option=None)


def test_the_best_checkpoint_state_survives_a_moved_run_folder(tmp_path):
    # Lightning's ModelCheckpoint drops the best score when the saved folder is spelled otherwise (a moved or copied
    # run folder, a bundle resumed elsewhere) and keeps the old folder's path: a resumed run then chose another best
    # checkpoint than an uninterrupted one.
    old = ModelCheckpoint(dirpath=str(tmp_path / "old"), filename="best-{step}", monitor="val/dice_mean", mode="max")
    old.best_model_score, old.best_model_path = torch.tensor(0.7), str(tmp_path / "old" / "best-500.ckpt")
    old.best_k_models = {old.best_model_path: torch.tensor(0.7)}
    new = BestCheckpoint(dirpath=str(tmp_path / "new"), filename="best-{step}", monitor="val/dice_mean", mode="max")
    assert new.state_key == old.state_key  # checkpoints written by either restore the other
    new.load_state_dict(old.state_dict())
    assert float(new.best_model_score) == pytest.approx(0.7)
    assert new.best_model_path == str(tmp_path / "new" / "best-500.ckpt")
    assert list(new.best_k_models) == [new.best_model_path]
