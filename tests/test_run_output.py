"""What `ssl-bench train` prints and logs: a header line, one progress bar over the step budget that a resumed run
continues, a measured time estimate, the result table last, nothing from Lightning or W&B in between; one CSV log
per run folder; the data root it read in config.yaml."""

import csv
import gc
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from ssl_bench.cli import main
from ssl_bench.config import load_config
from ssl_bench.data.dataset import resolve_dataset
from conftest import PROJECT_ROOT, TINY
from test_train_e2e import _killed_after_first_checkpoint

NOISE = ("litlogger", "anonymous", "wandb:", "GPU available", "TPU available", "Seed set", "Restoring states",
         "exists and is not empty", "Trainer.fit` stopped", "v_num", "Epoch 0", "treespec", "Tip:",
         "smaller than the logging interval")


def _args(root, cache, *extra, method="mean_teacher"):
    tiny = [a for a in TINY if a not in ("trainer.enable_progress_bar=false", "logging.wandb=false")]
    return ["train", "--method", method, "--data", "synthetic", f"run.runs_dir={root}", f"data.cache_dir={cache}",
            *tiny, "data.fraction=0.5", "trainer.max_steps=6", "trainer.val_every_n_steps=2", *extra]


def _run(root, method="mean_teacher"):
    return root / "synthetic" / method / "frac0.5" / "draw0"


def _csv_rows(run):
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_prints_a_header_its_progress_and_its_result_last(tmp_path, synthetic_cache, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert main(_args(tmp_path, synthetic_cache)) == 0
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    run = _run(tmp_path)
    assert lines[0] == (f"mean_teacher on synthetic, fraction 0.5, draw 0: 4 labeled + 3 unlabeled training cases, "
                        f"6 steps, validation every 2, test on 3 cases. Run folder: {run}")
    assert re.search(r"\d+\.\d{3} s/step \(median of steps 2-4\): about [\d a-z]+ for the 2 steps left", out)
    assert "6/6" in out and "/?" not in out  # the bar counts the step budget
    assert "\r" not in out and re.search(r"^training: step 6/6 \(100%\), \d+\.\d{3} s/step, ", out, re.M)  # a pipe
    table = next(i for i, line in enumerate(lines) if "Dice mean" in line) - 1  # the table's title line
    assert lines[table - 1].startswith("W&B run (offline)") and lines[-1].startswith("* primary result")
    assert not [line for line in lines[table - 1:] if "%|" in line or "\r" in line]  # no bar after the table starts
    assert not [n for n in NOISE if n in out + err], err[-2000:]
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["metrics.csv"]


def test_a_resumed_run_continues_its_progress_bar_and_its_csv_log(tmp_path, synthetic_cache, capfd, monkeypatch):
    """Killed right after its step-2 checkpoint, a run resumes with a bar at 2 of 6 that ends at 6/6 and no warning
    about its own checkpoint folder, and its one metrics.csv ends as that of the same run never stopped."""
    uninterrupted, resumed = tmp_path / "a", tmp_path / "b"
    assert main(_args(uninterrupted, synthetic_cache, "logging.wandb=false")) == 0
    _killed_after_first_checkpoint(resumed, _args(resumed, synthetic_cache, "logging.wandb=false"), monkeypatch)
    gc.collect()  # the stopped run's progress bar closes (a killed process's would be gone)
    capfd.readouterr()
    assert main(_args(resumed, synthetic_cache, "logging.wandb=false")) == 0
    out, err = capfd.readouterr()
    assert "steps 3-6 of 6, resuming from step 2" in out.splitlines()[0]
    assert "2/6" in out and "6/6" in out and "/?" not in out
    assert not [n for n in NOISE if n in out + err], err[-2000:]
    run = _run(resumed)
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["metrics.csv"]
    expected, got = _csv_rows(_run(uninterrupted)), _csv_rows(run)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    # The losses and validation Dice logged are those of the run never stopped, row by row.
    columns = [c for c in expected[0] if c.startswith(("train/", "val/"))]
    assert [[r[c] for c in columns] for r in got] == [[r[c] for c in columns] for r in expected]


def test_config_yaml_records_the_data_root_from_the_environment_outside_the_run_identity(tmp_path, synthetic_cache,
                                                                                          monkeypatch, capsys):
    """A dataset with a manifest (here a copy of the synthetic one) whose root comes from SSL_BENCH_DATA_ROOT."""
    manifest, generated = resolve_dataset(load_config("supervised", "synthetic", [*TINY, f"data.cache_dir={synthetic_cache}"]))
    root = tmp_path / "data"
    shutil.copytree(generated, root)
    args = ["train", "--method", "supervised", "--data", "synthetic", f"run.runs_dir={tmp_path / 'runs'}",
            f"data.manifest={root / 'manifest.json'}", *TINY, "data.fraction=0.5", "trainer.max_steps=1",
            "trainer.val_every_n_steps=1"]
    monkeypatch.setenv("SSL_BENCH_DATA_ROOT", str(root))
    assert main(args) == 0
    saved = yaml.safe_load((_run(tmp_path / "runs", "supervised") / "config.yaml").read_text())
    assert saved["data"]["root"] == str(root.resolve())
    # Another copy of the same data is the same run: it is found finished, not refused as another config.
    other = tmp_path / "elsewhere"
    shutil.copytree(root, other)
    monkeypatch.delenv("SSL_BENCH_DATA_ROOT")
    capsys.readouterr()
    assert main(args + [f"data.root={other}"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_the_header_says_when_validation_actually_happens():
    """A 40-step run with the default 250 between validations validates once, at step 40 (the Trainer's
    val_check_interval is the smaller of the two); the header said "validation every 250"."""
    from ssl_bench.run.console import run_header, validation_interval
    for every, expected in [(250, "40 steps, validation once, at step 40, test on 3 cases"),
                            (20, "40 steps, validation every 20, test on 3 cases"),
                            (40, "40 steps, validation once, at step 40, test on 3 cases")]:
        cfg = load_config("supervised", "synthetic", ["trainer.max_steps=40", f"trainer.val_every_n_steps={every}"])
        assert validation_interval(cfg.trainer) == min(every, 40)
        assert expected in run_header(cfg, 4, 0, 3, "runs/x", 0)


def test_the_training_bar_is_redrawn_at_most_every_redraw_seconds_and_at_the_last_step():
    """A redraw reads the logged values (on a GPU, a wait for its queue) and writes a line: not at every step."""
    from types import SimpleNamespace
    from ssl_bench.run.console import StepProgressBar

    now = [0.0]
    bar = StepProgressBar(redraw_seconds=1.0, clock=lambda: now[0], interactive=True)
    drawn = []
    shown = SimpleNamespace(disable=False, total=10, n=0, set_postfix=lambda metrics: drawn.append(shown.n))
    bar._train_progress_bar = shown
    bar.get_metrics = lambda trainer, module: {}
    trainer = SimpleNamespace(global_step=0)
    for step in range(1, 11):
        trainer.global_step, now[0] = step, step * 0.3  # a step every 0.3 s
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
    assert drawn == [1, 5, 9, 10]  # the first step, then once a second, and the last


def test_in_a_pipe_or_a_log_file_a_run_prints_plain_lines_with_its_step_rate_and_eta():
    """Not a terminal, the bar's redraws left stale step counts and a wrong ETA in the log: plain lines instead, every
    5% of the budget (at least LINE_MIN_SECONDS apart, at most LINE_MAX_SECONDS), and at the last step."""
    import io
    from types import SimpleNamespace
    from ssl_bench.run.console import LINE_MAX_SECONDS, StepProgressBar

    now, out = [100.0], io.StringIO()
    bar = StepProgressBar(clock=lambda: now[0], file=out, interactive=False)
    trainer = SimpleNamespace(global_step=0, max_steps=200, is_global_zero=True)
    bar.get_metrics = lambda trainer, module: {"train/loss": 0.8123}
    bar._trainer = trainer
    bar.init_train_tqdm = lambda: None
    bar.on_train_start(trainer, None)
    for step in range(1, 201):  # a step every 2 s, then one that takes LINE_MAX_SECONDS
        trainer.global_step, now[0] = step, now[0] + (LINE_MAX_SECONDS if step == 105 else 2.0)
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "training: step 10/200 (5%), 2.000 s/step, ETA 6 min 20 s, train/loss=0.812"
    assert [int(line.split()[2].split("/")[0]) for line in lines] == [10 * k for k in range(1, 11)] + [105] + [
        10 * k for k in range(11, 21)]
    assert lines[-1].startswith("training: step 200/200 (100%), ") and lines[-1].endswith(" in all, train/loss=0.812")
    # resumed at step 50: it says so, and its rate counts from there
    out.truncate(0), out.seek(0)
    trainer.global_step, now[0] = 50, 0.0
    bar.on_train_start(trainer, None)
    trainer.global_step, now[0] = 60, 30.0
    bar.on_train_batch_end(trainer, None, None, None, 0)
    assert out.getvalue().splitlines() == ["training: from step 50/200 (resumed)",
                                           "training: step 60/200 (30%), 3.000 s/step, ETA 7 min 00 s, train/loss=0.812"]


def test_a_step_the_loggers_do_not_write_reads_no_value_back(tmp_path, synthetic_cache, monkeypatch):
    """On a GPU each Tensor.item() waits for the device's queue to drain. Outside the steps the loggers write (and
    the bar's redraws), a run reads no value back: Lightning converted the last loss logged for the progress bar to a
    number at every step's end, and the bar read it again."""
    import lightning.pytorch as pl
    import torch
    from ssl_bench.run import train

    reads, steps = [0], []
    item = torch.Tensor.item

    host = set()  # the optimizers' step counts, which stay on the host (torch's Adam reads them every step)

    def counted(tensor):
        reads[0] += id(tensor) not in host
        return item(tensor)

    class PerStep(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            host.update(id(state["step"]) for optimizer in trainer.optimizers for state in optimizer.state.values())
            if steps:
                steps[-1]["reads"] = reads[0]
            reads[0] = 0
            steps.append({"logs": trainer._logger_connector.should_update_logs})

    monkeypatch.setattr(torch.Tensor, "item", counted)
    monkeypatch.setattr(train, "step_callbacks", lambda timer, made=train.step_callbacks: [*made(timer), PerStep()])
    assert main(_args(tmp_path, synthetic_cache, "logging.wandb=false", "trainer.log_every_n_steps=3",
                      "trainer.max_steps=12", "trainer.val_every_n_steps=12")) == 0
    quiet = [s["reads"] for s in steps[1:-1] if not s["logs"]]  # the first step draws the bar
    assert len(quiet) >= 6 and quiet == [0] * len(quiet), steps


@pytest.mark.parametrize("command", ["bench", "perf"])
def test_make_bench_and_make_perf_print_none_of_lightnings_noise(command, tmp_path, synthetic_cache):
    """As make runs them, each in a process of its own (so with Python's own warning filters, not pytest's): no
    litlogger tip, pytree deprecation warning, "Seed set to", GPU/TPU lines, nor (a budget below
    trainer.log_every_n_steps) the log-interval warning; `make perf` printed all of them twice."""
    tiny = [a for a in TINY if a != "trainer.enable_progress_bar=false"]
    if command == "bench":
        args = ["ssl_bench.cli", "train", "--method", "supervised", "--data", "synthetic", "data.fraction=0.5",
                "trainer.max_steps=4", "trainer.val_every_n_steps=2", f"run.runs_dir={tmp_path}"]
    else:
        args = ["ssl_bench.tools.perf", "--data", "synthetic", "--methods", "supervised", "--steps", "2",
                "--warmup", "1"]
    done = subprocess.run([sys.executable, "-m", *args, f"data.cache_dir={synthetic_cache}", *tiny], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert ("stack / bare" if command == "perf" else "* primary result") in output
    assert not [n for n in NOISE if n in output], output[-3000:]
