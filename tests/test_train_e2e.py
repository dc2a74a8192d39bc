"""Supervised runs end to end on tiny synthetic data through the CLI: files, resume, skip, errors."""

import csv
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from ssl_bench.cli import main
from ssl_bench.config import load_config, to_yaml
from ssl_bench.data.manifest import load_manifest
from ssl_bench.data.splits import split_pool
from ssl_bench.run.callbacks import STOPPED_EXIT_CODE, StepTimer
from ssl_bench.run.provenance_entry import PROVENANCE_KEYS, cpu_model
from ssl_bench.run.train import checkpoint_callbacks
from conftest import PROJECT_ROOT, SHARED_DATA, TINY



def _args(tmp_path, cache, *extra, method="supervised"):
    return ["train", "--method", method, "--data", "synthetic", f"run.runs_dir={tmp_path / 'runs'}",
            f"data.cache_dir={cache}", *TINY, *extra]


def _run_dir(tmp_path, frac=0.5, method="supervised"):
    return tmp_path / "runs" / "synthetic" / method / f"frac{frac}" / "draw0"


def test_supervised_end_to_end_then_skip_then_force(tmp_path, synthetic_cache, capsys):
    args = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=6", "trainer.val_every_n_steps=3")
    assert main(args) == 0
    out = capsys.readouterr().out
    run = _run_dir(tmp_path)
    assert "Dice mean" in out and "organ1" in out  # the summary table

    metrics = json.loads((run / "metrics.json").read_text())
    manifest = load_manifest(next(Path(synthetic_cache).glob("synthetic/*/manifest.json")))
    split = split_pool(manifest.pool, 0.5, 0)
    splits = json.loads((run / "splits.json").read_text())
    assert splits["labeled"] == split.labeled and splits["unlabeled"] == split.unlabeled
    assert splits["test"] == manifest.test and splits["validation"] == manifest.validation
    assert metrics["n_labeled"] == len(split.labeled) and metrics["steps"] == 6
    assert set(metrics["results"]) == {"last", "best", "test_best"}  # test_best: the audit (tests/test_audit.py)
    primary = metrics["primary"]
    assert primary["checkpoint"] == "last" and primary["model"] == "student"
    assert 0.0 <= primary["dice_mean"] <= 1.0 and math.isfinite(primary["hd95_mean"])
    assert metrics["seconds_per_step"] > 0 and metrics["n_parameters"] > 0
    assert tuple(metrics["provenance"]) == PROVENANCE_KEYS  # where and with what it was computed
    assert metrics["provenance"]["device"] == cpu_model() and metrics["provenance"]["precision"] == "32-true"

    with open(run / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(manifest.test)            # last, best and test_best, every test case once
    assert {r["case_id"] for r in rows} == set(manifest.test)
    assert {"dice_organ1", "hd95_organ3", "dice_mean", "checkpoint", "model"} <= set(rows[0])
    assert {"confusion_organ1", "confusion_mean"} <= set(rows[0]) and "confusion_mean" in primary  # 3 organs
    last_mean = np.nanmean([float(r["dice_mean"]) for r in rows if r["checkpoint"] == "last"])
    assert last_mean == pytest.approx(primary["dice_mean"])
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert (run / "metrics.json").stat().st_mtime_ns == stamp

    assert main(args + ["--force"]) == 0
    assert (run / "metrics.json").stat().st_mtime_ns != stamp


def test_changed_config_in_same_run_folder_is_refused(tmp_path, synthetic_cache, capsys):
    base = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=2", "trainer.val_every_n_steps=2")
    run = _run_dir(tmp_path)
    run.mkdir(parents=True)
    earlier = load_config("supervised", "synthetic", base[5:] + ["optim.lr=1.0"])
    (run / "config.yaml").write_text(to_yaml(earlier))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "different config (optim.lr differ)" in err and "run.tag" in err


def test_a_finished_run_answers_only_its_own_config_wherever_its_folder_is(tmp_path, synthetic_cache, capsys,
                                                                        monkeypatch):
    """A finished run folder asked for with another budget or learning rate is refused, the differing keys named,
    not answered with its old result; the same runs folder copied elsewhere, or spelled relative, is the same run;
    a metrics.json cut short, empty or without a result is named and the run evaluated again from its last
    checkpoint (no step trained again). Under umask 022 every file of the run is readable by the team."""
    common = ("data.fraction=0.5", "trainer.val_every_n_steps=2", "trainer.max_steps=2")
    args = _args(tmp_path, synthetic_cache, *common)
    previous_umask = os.umask(0o022)
    try:
        assert main(args) == 0
    finally:
        os.umask(previous_umask)
    run = _run_dir(tmp_path)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 6 and [p for p in files if p.stat().st_mode & 0o044 != 0o044] == []
    metrics_path = run / "metrics.json"
    finished = metrics_path.read_text()
    capsys.readouterr()
    for change, key in [("trainer.max_steps=3", "trainer.max_steps"), ("optim.lr=0.001", "optim.lr")]:
        assert main(args + [change]) == 2
        err = capsys.readouterr().err
        assert f"{run} holds a run with a different config ({key} differ)" in err
        assert "run.tag=<name>" in err and "--force" in err
    assert metrics_path.read_text() == finished

    copy = tmp_path / "moved" / "runs"
    shutil.copytree(tmp_path / "runs", copy)
    monkeypatch.chdir(copy.parent)
    for runs_dir in ("runs", str(copy)):
        assert main([a if not a.startswith("run.runs_dir=") else f"run.runs_dir={runs_dir}" for a in args]) == 0
        assert "already finished" in capsys.readouterr().out

    for broken, problem in [(finished[:len(finished) // 2], "not valid JSON"), ("", "empty"),
                            ('{"steps": 2}', "holds no complete result")]:
        metrics_path.write_text(broken)
        assert main(args) == 0
        err = capsys.readouterr().err
        assert f"{metrics_path}: {problem}" in err and "evaluated again from" in err
        metrics = json.loads(metrics_path.read_text())
        assert metrics["steps"] == 2 and metrics["resumed_from_step"] == 2
        assert metrics["primary"] == json.loads(finished)["primary"]

    (run / "config.yaml").unlink()
    assert main(args) == 2
    assert "has a metrics.json but no config.yaml" in capsys.readouterr().err


def test_run_started_before_a_config_key_existed_resumes_while_the_key_keeps_its_default(tmp_path, synthetic_cache,
                                                                                        capsys):
    """An interrupted run whose config.yaml predates a schema key (written by an older ssl-bench) still resumes;
    giving the new key another value than its default is a different run."""
    base = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=2", "trainer.val_every_n_steps=2")
    run = _run_dir(tmp_path)
    run.mkdir(parents=True)
    older = OmegaConf.to_container(load_config("supervised", "synthetic", base[5:]))
    del older["data"]["partial"], older["model"]["init_from"]  # keys added after the foundation
    (run / "config.yaml").write_text(OmegaConf.to_yaml(older))
    assert main(base + ["data.partial.alpha=0.5"]) == 2
    assert "different config (data.partial.alpha differ)" in capsys.readouterr().err
    assert main(base) == 0
    assert (run / "metrics.json").is_file()
    # How a run executes or logs may change between an interruption and its resume.
    resumable = load_config("supervised", "synthetic", base[5:] + ["trainer.enable_progress_bar=true",
                                                                   "logging.wandb_mode=online"])
    (run / "config.yaml").write_text(to_yaml(resumable))
    assert main(base) == 0


def test_two_d_mode_trains_on_slices_and_evaluates_volumes(tmp_path, synthetic_cache):
    args = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "data.spatial_dims=2", "data.patch_size=[16,16]",
                 "trainer.max_steps=4", "trainer.val_every_n_steps=2", "eval.save_predictions=true")
    assert main(args) == 0
    metrics = json.loads((_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["results"]["last"]["student"]["n_cases"] == metrics["n_test"]
    assert 0.0 <= metrics["primary"]["dice_mean"] <= 1.0
    # Saved predictions are whole 3D volumes on the image's grid, openable next to it in a viewer.
    manifest = load_manifest(next(Path(synthetic_cache).glob("synthetic/*/manifest.json")))
    case = manifest.case_by_id[manifest.test[0]]
    image = nib.load(str(manifest.path.parent / manifest.directory / case.image))
    pred = nib.load(str(_run_dir(tmp_path) / "predictions" / f"{case.id}.nii.gz"))
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(manifest.num_classes))


def test_bad_data_fails_before_training_naming_every_file(tmp_path, synthetic_cache, capsys, monkeypatch):
    # A private copy of the synthetic set with two broken cases, used through an explicit manifest + root.
    assert main(_args(tmp_path, synthetic_cache, "trainer.max_steps=1", "trainer.val_every_n_steps=1")) == 0
    src = next(Path(synthetic_cache).glob("synthetic/*/manifest.json")).parent
    root = tmp_path / "copy"
    import shutil
    shutil.copytree(src, root)
    manifest = load_manifest(root / "manifest.json")
    broken_label = root / manifest.directory / manifest.case_by_id[manifest.test[0]].label
    broken_image = root / manifest.directory / manifest.case_by_id[manifest.validation[0]].image
    lab = nib.load(str(broken_label))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj) + 7, lab.affine), str(broken_label))
    broken_image.write_bytes(b"not a nifti")
    args = _args(tmp_path, synthetic_cache, "data.name=mycopy", f"data.manifest={root / 'manifest.json'}",
                 f"data.root={root}", "trainer.max_steps=1")
    # "Before training", checked by behaviour rather than by the clock: Trainer.fit must never be reached.
    import lightning.pytorch as pl

    def no_training(*args, **kwargs):
        raise AssertionError("training started on bad data")
    monkeypatch.setattr(pl.Trainer, "fit", no_training)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(broken_label) in err and "outside the declared labels" in err
    assert str(broken_image) in err
    assert "training started" not in err
    assert not (tmp_path / "runs" / "synthetic" / "mycopy").exists()


def test_missing_data_root_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SSL_BENCH_DATA_ROOT", raising=False)
    assert main(["train", "--method", "supervised", f"run.runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "SSL_BENCH_DATA_ROOT" in err and "ssl-bench data download hippocampus" in err
    # ... and how to pass either through make, the README's front door.
    assert 'make bench ... ARGS="data.root=/path"' in err and "SSL_BENCH_DATA_ROOT=/path make bench" in err


def test_resume_after_kill(tmp_path, synthetic_cache):
    """A real SIGKILL mid-run, then the same command: it resumes from last.ckpt and finishes."""
    args = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=120",
                 "trainer.val_every_n_steps=10")
    cmd = [sys.executable, "-m", "ssl_bench.cli", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    last = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not last.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert last.is_file(), "no checkpoint was written before the deadline"
        time.sleep(0.5)  # let it step a little past the checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (_run_dir(tmp_path) / "metrics.json").exists()
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout
    # The data streams continue at the checkpoint's step: Lightning's "not resumable" warning would be wrong.
    assert "not resumable" not in done.stderr
    metrics = json.loads((_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["steps"] == 120
    assert 0 < metrics["resumed_from_step"] < 120


class _Killed(Exception):
    pass


def test_a_resumed_run_computes_what_an_uninterrupted_one_computes(tmp_path, synthetic_cache, monkeypatch):
    """Stopped right after its step-2 checkpoint and started again, a Mean Teacher run (two data streams, random
    crops and flips, dropout, input noise) ends with the weights of the same run never stopped, bit for bit: it
    continues the data streams where they were (not from their start) and restores the random state. Step 2 of 6
    is before half the budget, where Lightning used to end the resumed epoch early and start the streams over
    (a resumed run is one epoch: OneEpochStreams)."""
    from ssl_bench.run.callbacks import ResumeCheckpoint
    common = ("data.fraction=0.5", "trainer.max_steps=6", "trainer.val_every_n_steps=2")
    uninterrupted, resumed = tmp_path / "a", tmp_path / "b"
    assert main(_args(uninterrupted, synthetic_cache, *common, method="mean_teacher")) == 0

    save_and_continue = ResumeCheckpoint.on_validation_end

    def save_and_stop(self, trainer, pl_module):
        save_and_continue(self, trainer, pl_module)
        if trainer.global_step == 2:
            raise _Killed  # as a kill right after the checkpoint: train() leaves no result
    monkeypatch.setattr(ResumeCheckpoint, "on_validation_end", save_and_stop)
    with pytest.raises(_Killed):
        main(_args(resumed, synthetic_cache, *common, method="mean_teacher"))
    monkeypatch.undo()
    run = _run_dir(resumed, method="mean_teacher")
    assert not (run / "metrics.json").exists()
    assert main(_args(resumed, synthetic_cache, *common, method="mean_teacher")) == 0
    assert json.loads((run / "metrics.json").read_text())["resumed_from_step"] == 2
    _assert_same_final_weights(uninterrupted, resumed, "mean_teacher")


def _assert_same_final_weights(root_a, root_b, method):
    def final_weights(root):
        return torch.load(_run_dir(root, method=method) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    expected, got = final_weights(root_a), final_weights(root_b)
    assert expected.keys() == got.keys()
    differing = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not differing, f"{len(differing)} of {len(expected)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_cache):
    """The runs folder of an uninterrupted run per method and configuration, each run once per module."""
    roots = {}

    def run(method, *common):
        if (method, common) not in roots:
            roots[method, common] = tmp_path_factory.mktemp("uninterrupted")
            assert main(_args(roots[method, common], synthetic_cache, *common, method=method)) == 0
        return roots[method, common]
    return run


def _signal_at(step, signum, monkeypatch):
    """Sends ``signum`` to this process at the end of training step ``step``, as a user or a cluster would (Lightning's
    SIGTERM handler and CheckpointOnStop's Ctrl-C handler are installed for the fit)."""
    time_step = StepTimer.on_train_batch_end

    def time_step_then_signal(self, trainer, *args):
        time_step(self, trainer, *args)
        if trainer.global_step == step:
            os.kill(os.getpid(), signum)
    monkeypatch.setattr(StepTimer, "on_train_batch_end", time_step_then_signal)


@pytest.mark.parametrize("method, max_steps, val_every, stops, signum", [
    # Resumed at step 14 of 30, Lightning ended the epoch at step 16 (30 - 14) and started another, whose
    # validation loader, made again, re-seeded torch's generator: from step 20 on, dropout and noise differed.
    ("mean_teacher", 30, 10, [14], signal.SIGTERM),
    # Ctrl-C three times: before the first validation, at one (which the stop cuts short, so step 3's checkpoint
    # stays), and after a resume past half the budget.
    ("mean_teacher", 30, 10, [3, 10, 22], signal.SIGINT),
    # The issue's own case: stopped at step 70 of 150, validating every 50 (final weights up to 5e-3 apart); one
    # image a step, since the cost of 150 steps is all this case adds.
    ("supervised", 150, 50, [70], signal.SIGTERM)])
def test_a_run_stopped_by_sigterm_or_ctrl_c_resumes_to_the_weights_of_the_uninterrupted_run(
        tmp_path, synthetic_cache, monkeypatch, capsys, request, uninterrupted, method, max_steps, val_every, stops,
        signum):
    """SIGTERM (a cluster's preemption or time limit, `kill`) or Ctrl-C during a step: `ssl-bench train` finishes the
    step, saves it (or, when a validation follows it and the stop cuts that short, keeps the previous checkpoint),
    exits with 143 or 130 and no result; the same command resumes there, and after any number of stops the run ends
    with the weights of the run never stopped, bit for bit."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # pytest started in the background (`cmd &`) ignores Ctrl-C, and so, by design, does a run it starts: give the
        # runs of this test a terminal's Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    common = ("data.fraction=0.5", f"trainer.max_steps={max_steps}", f"trainer.val_every_n_steps={val_every}")
    if max_steps > 100:
        common += ("data.labeled_batch_size=1",)
    run = _run_dir(tmp_path, method=method)
    last = run / "checkpoints" / "last.ckpt"
    name, code = ("Ctrl-C", 130) if signum == signal.SIGINT else ("SIGTERM", STOPPED_EXIT_CODE)
    saved, shells_sigint = 0, signal.getsignal(signal.SIGINT)
    for stop in stops:
        _signal_at(stop, signum, monkeypatch)
        assert main(_args(tmp_path, synthetic_cache, *common, method=method)) == code
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is shells_sigint  # Ctrl-C is the shell's again
        saved = stop if stop % val_every else max(saved, stop - val_every)
        err = capsys.readouterr().err
        if saved == stop:
            assert f"stopped by {name} after step {stop}, saved to {last}; the same command resumes from it" in err
        else:
            assert f"stopped by {name} after step {stop}, the same command resumes from step {saved} ({last})" in err
        assert torch.load(last, weights_only=True)["global_step"] == saved
        assert not (run / "metrics.json").exists()

    assert main(_args(tmp_path, synthetic_cache, *common, method=method)) == 0
    assert json.loads((run / "metrics.json").read_text())["resumed_from_step"] == saved
    reference = uninterrupted(method, *common)
    # As many epochs as the uninterrupted run: one, the budget.
    epochs = [torch.load(_run_dir(root, method=method) / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
              for root in (reference, tmp_path)]
    assert epochs[0] == epochs[1]
    _assert_same_final_weights(reference, tmp_path, method)


def _killed_after_first_checkpoint(tmp_path, args, monkeypatch) -> Path:
    """Runs ``args`` until its first resume checkpoint is written, then stops it as a kill would; its last.ckpt."""
    from ssl_bench.run.callbacks import ResumeCheckpoint
    save_and_continue = ResumeCheckpoint.on_validation_end

    def save_and_stop(self, trainer, pl_module):
        save_and_continue(self, trainer, pl_module)
        raise _Killed
    monkeypatch.setattr(ResumeCheckpoint, "on_validation_end", save_and_stop)
    with pytest.raises(_Killed):
        main(args)
    monkeypatch.undo()
    return _run_dir(tmp_path) / "checkpoints" / "last.ckpt"


def test_an_unreadable_last_checkpoint_is_an_error_naming_it_and_the_way_on(tmp_path, synthetic_cache, monkeypatch,
                                                                            capsys):
    """A last.ckpt cut short, overwritten or empty: `ssl-bench train` exits with 2 and a message naming the file, what
    is wrong and the newest intact checkpoint to resume from (not a 50-line traceback); --resume-from that file
    resumes, keeping the unreadable one aside."""
    args = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=4", "trainer.val_every_n_steps=2")
    last = _killed_after_first_checkpoint(tmp_path, args, monkeypatch)
    best = last.with_name("best-2.ckpt")
    intact = last.read_bytes()
    capsys.readouterr()
    for damaged, problem in [(intact[:len(intact) // 3], "cannot be read as a checkpoint"),
                             (b"\x00garbage" * 100, "cannot be read as a checkpoint"), (b"", "is empty")]:
        last.write_bytes(damaged)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ssl-bench: error: {last} {problem}") and "Traceback" not in err
        assert (f"Its newest intact checkpoint is {best} (step 2): run the same command with --resume-from {best} "
                "(or --resume-from newest)") in err
    assert main(args + ["--resume-from", str(best)]) == 0
    assert last.with_name("last.ckpt.unreadable").read_bytes() == b""
    metrics = json.loads((_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4


def test_a_checkpoint_without_a_random_state_still_resumes(tmp_path, synthetic_cache, monkeypatch):
    """Checkpoints written before the random state (session 8) and the step timer (session 11) were saved resume,
    with the random state as it is and the cost of the steps after the resume."""
    args = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=4", "trainer.val_every_n_steps=2")
    last = _killed_after_first_checkpoint(tmp_path, args, monkeypatch)
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["callbacks"]["TrainingRandomState"], checkpoint["callbacks"]["StepTimer"]
    torch.save(checkpoint, last)
    assert main(args) == 0
    metrics = json.loads((_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert len(torch.load(last, weights_only=True)["callbacks"]["StepTimer"]["durations"]) == 2


def test_a_resumed_run_reports_the_cost_of_all_its_steps(tmp_path, synthetic_cache, monkeypatch):
    """seconds_per_step and wall_time_s of a run killed after its step-2 checkpoint and resumed cover the steps of
    both processes, not only those after the resume."""
    args = _args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=4", "trainer.val_every_n_steps=2")
    last = _killed_after_first_checkpoint(tmp_path, args, monkeypatch)
    before = torch.load(last, weights_only=True)["callbacks"]["StepTimer"]
    assert len(before["durations"]) == 2 and before["wall_time_s"] > 0
    assert main(args) == 0
    after = torch.load(last, weights_only=True)["callbacks"]["StepTimer"]
    assert after["durations"][:2] == before["durations"] and len(after["durations"]) == 4
    metrics = json.loads((_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert metrics["seconds_per_step"] == statistics.median(after["durations"])
    assert metrics["wall_time_s"] > after["wall_time_s"] > before["wall_time_s"]


class _PlateauModule(pl.LightningModule):
    """A linear model whose validation score only gets worse after its first validation."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/dice_mean", 1.0 / (1 + self.global_step))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_testing_an_earlier_checkpoint_does_not_rewind_the_step_timer(tmp_path):
    """Regression (session 12): the runner's trainer.test(ckpt_path=best) restored the timer's state from the best
    checkpoint, so metrics.json had that step's durations and its wall time plus the whole process's (an adversarial
    cell whose best step was 1250: 10440 s for a 6467 s process)."""
    best_cb, resume_cb = checkpoint_callbacks(tmp_path)
    timer = StepTimer(warmup=0)
    loader = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=2)
    trainer = pl.Trainer(max_steps=6, max_epochs=-1, val_check_interval=2, check_val_every_n_epoch=None,
                         limit_val_batches=1, limit_test_batches=1, num_sanity_val_steps=0, accelerator="cpu",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[best_cb, resume_cb, timer])
    trainer.fit(_PlateauModule(), loader, loader)
    durations, wall_time = list(timer.durations), timer.wall_time_s
    assert Path(best_cb.best_model_path).name == "best-2.ckpt"
    trainer.test(_PlateauModule(), loader, ckpt_path=best_cb.best_model_path, verbose=False)
    assert timer.durations == durations and len(durations) == 6 and timer.restored_steps == 0
    assert wall_time < timer.wall_time_s < wall_time + 60


def test_resume_checkpoint_follows_every_validation_though_the_score_stops_improving(tmp_path):
    """Regression: last.ckpt came from ModelCheckpoint(save_last=True), which with a monitored metric writes it
    only when the score improves, so a run killed on a plateau resumed from its best step (session 7: a
    Mean Teacher cell killed at step 1509 resumed at 1000)."""
    best_cb, resume_cb = checkpoint_callbacks(tmp_path)
    resumable_steps = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step in (3, 5):
                resumable_steps.append(torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"])

    loader = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=2)
    trainer = pl.Trainer(max_steps=6, max_epochs=-1, val_check_interval=2, check_val_every_n_epoch=None,
                         limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[best_cb, resume_cb, Probe()])
    # Lightning's logger does not propagate to pytest's capture: listen on it directly.
    messages, lightning_log = [], logging.getLogger("lightning.pytorch")
    listener = logging.Handler(logging.INFO)
    listener.emit = lambda record: messages.append(record.getMessage())
    lightning_log.addHandler(listener)
    try:
        trainer.fit(_PlateauModule(), loader, loader)
    finally:
        lightning_log.removeHandler(listener)
    assert resumable_steps == [2, 4]
    # Regression: saving the resume state without saying it is the full state logged "`weights_only` was not
    # set, defaulting to `False`" at every validation of every run.
    assert [m for m in messages if "weights_only" in m] == []
    assert Path(best_cb.best_model_path).name == "best-2.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-2.ckpt", "last.ckpt"]


@pytest.mark.skipif(not (SHARED_DATA / "Task04_Hippocampus").is_dir(), reason="real data root not present")
def test_real_data_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_DATA_ROOT", str(SHARED_DATA))
    args = ["train", "--method", "supervised", "--data", "hippocampus", f"run.runs_dir={tmp_path}",
            "data.fraction=0.05", "trainer.max_steps=3", "trainer.val_every_n_steps=3",
            "model.channels=[4,8,16]", "model.strides=[2,2]", "trainer.enable_progress_bar=false",
            "logging.wandb=false"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "hippocampus" / "supervised" / "frac0.05" / "draw0" / "metrics.json").read_text())
    assert metrics["n_labeled"] == 10 and metrics["n_test"] == 52 and metrics["classes"] == ["anterior", "posterior"]


def test_a_checkpoint_two_selections_share_is_scored_once(tmp_path, synthetic_cache, monkeypatch):
    calls = []
    original = pl.Trainer.test

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("ckpt_path"))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(pl.Trainer, "test", counted)
    # one validation, at the last step: last, best and test_best are the same step's weights
    assert main(_args(tmp_path, synthetic_cache, "data.fraction=0.5", "trainer.max_steps=3",
                      "trainer.val_every_n_steps=3")) == 0
    assert len(calls) == 1
    run = _run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["results"]["best"] == metrics["results"]["last"] == metrics["results"]["test_best"]
    rows = list(csv.DictReader((run / "per_case.csv").open()))
    assert {r["checkpoint"] for r in rows} == {"last", "best", "test_best"}
    assert {"jaccard_mean", "asd_mean"} <= set(rows[0])
