"""make perf's arithmetic and a smoke run of it on tiny synthetic data (timings themselves are never asserted)."""

import contextlib
import io
import math
import re

import pytest

from types import SimpleNamespace

import torch

from ssl_bench.tools.perf import (StepBreakdown, _StepClock, breakdown_from_profile, main, own_overhead,
                                  print_method_table)
from tests.conftest import TINY


def _step(per_step: float, data: float, forward: float = 0.0, backward: float = 0.0) -> StepBreakdown:
    return StepBreakdown(per_step=per_step, forward=forward, backward=backward, data=data)


def test_own_overhead_leaves_out_the_stack_cost_supervised_pays_too_and_the_extra_data():
    # supervised: 0.25 s a step against a 0.20 s minimum (0.05 s of stack, 0.02 of it data); a method whose
    # minimum is 0.30 s more and whose step is 0.40 s more adds a third beyond its passes; 0.30 s more adds
    # nothing; 0.34 s more of which 0.04 s is loading its extra (unlabeled) batch adds nothing either.
    supervised = _step(0.25, data=0.02)
    assert own_overhead(_step(0.65, data=0.02), 0.50, supervised, 0.20) == pytest.approx(1 / 3)
    assert own_overhead(_step(0.55, data=0.02), 0.50, supervised, 0.20) == pytest.approx(0.0)
    assert own_overhead(_step(0.59, data=0.06), 0.50, supervised, 0.20) == pytest.approx(0.0)


def test_step_breakdown_takes_the_timed_steps_of_each_profiled_action():
    durations = {  # two warm-up calls, then three timed ones
        "[Strategy]SingleDeviceStrategy.training_step": [9.0, 9.0, 0.30, 0.30, 0.30],
        "[Strategy]SingleDeviceStrategy.backward": [9.0, 9.0, 0.20, 0.20, 0.20],
        "[_TrainingEpochLoop].train_dataloader_next": [9.0, 9.0, 0.01, 0.02, 0.03],
        # the batch's move to the device, with the patches made there (data.augment_on_device), is data too; its
        # hooks inside it are not counted twice
        "[Strategy]SingleDeviceStrategy.batch_to_device": [9.0, 9.0, 0.01, 0.01, 0.01],
        "[LightningDataModule]SegmentationDataModule.on_after_batch_transfer": [9.0, 9.0, 0.01, 0.01, 0.01],
        "[LightningModule]MeanTeacher.on_train_batch_end": [9.0, 9.0, 0.01, 0.01, 0.01],
    }
    step = breakdown_from_profile(durations, per_step=0.6, steps=3)
    assert (step.forward, step.backward, step.data) == pytest.approx((0.30, 0.20, 0.03))
    assert step.other == pytest.approx(0.07)
    # Manual optimization: its backward passes and optimizer steps run inside training_step, unprofiled.
    manual = breakdown_from_profile({k: v for k, v in durations.items() if not k.endswith(".backward")},
                                    per_step=0.6, steps=3, automatic_optimization=False)
    assert manual.forward == pytest.approx(0.30) and math.isnan(manual.backward)
    assert manual.other == pytest.approx(0.27)
    # Two untimed steps after the timed ones (the operator-counted step and the one after it) are left out too.
    counted = {name: d + [50.0, 50.0] for name, d in durations.items()}
    assert breakdown_from_profile(counted, per_step=0.6, steps=3, untimed_after=2) == step


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_step_clock_times_each_step_apart_from_the_minimum_timed_between_steps():
    """The minimum is timed between the steps (so a drifting machine slows both alike), and never inside a step's
    own time; warm-up steps are left out of both."""
    clock, rounds = _FakeClock(), []

    def minimum(trainer, module):
        rounds.append(clock.now)
        clock.now += 100.0  # its own time, which no step may include
        return 0.5

    timer = _StepClock(warmup=2, between_steps=minimum, clock=clock)
    module = SimpleNamespace(device=torch.device("cpu"))
    timer.on_train_start(None, module)
    for seconds in [3.0, 4.0, 5.0, 6.0, 7.0]:
        clock.now += seconds
        timer.on_train_batch_end(None, module, None, None, 0)
    assert timer.step_seconds == [5.0, 6.0, 7.0]
    assert timer.between_seconds == [0.5, 0.5, 0.5]
    assert len(rounds) == 5, "warm-up steps warm the minimum up too"
    plain = _StepClock(warmup=0, clock=clock)
    plain.on_train_start(None, module)
    clock.now += 2.0
    plain.on_train_batch_end(None, module, None, None, 0)
    assert plain.step_seconds == [2.0] and plain.between_seconds == []


def test_step_clock_counts_the_operators_of_the_step_after_the_timed_ones_and_of_its_minimum_apart():
    clock, x = _FakeClock(), torch.ones(3)

    def minimum(trainer, module):
        x.exp()  # one operator a round
        return 0.5

    timer = _StepClock(warmup=1, between_steps=minimum, clock=clock, timed=2, count_operators=True)
    module = SimpleNamespace(device=torch.device("cpu"))
    timer.on_train_start(None, module)
    for operators in [4, 4, 4, 3, 4]:  # the step after the two timed ones makes 3 operators
        for _ in range(operators):
            x.neg()
        clock.now += 1.0
        timer.on_train_batch_end(None, module, None, None, 0)
    assert timer.step_seconds == [1.0, 1.0], "the counted step is not timed (counting slows it)"
    assert timer.between_seconds == [0.5, 0.5]
    assert dict(timer.step_operators.by_name) == {"neg": 3}
    assert dict(timer.between_operators.by_name) == {"exp": 1}
    # A run that fails inside the counted step leaves no dispatch mode on.
    failing = _StepClock(warmup=0, clock=clock, timed=1, count_operators=True)
    failing.on_train_start(None, module)
    failing.on_train_batch_end(None, module, None, None, 0)
    failing.on_exception(None, module, RuntimeError("in the counted step"))
    x.neg()
    assert failing.step_operators.total == 0


def test_perf_prints_every_method_against_supervised_and_its_minimum(synthetic_cache, capsys):
    overrides = [f"data.cache_dir={synthetic_cache}", *TINY]
    assert main(["--data", "synthetic", "--methods", "supervised,mean_teacher", "--steps", "2", "--warmup", "1",
                 *overrides]) == 0
    out = capsys.readouterr().out
    assert "stack / bare" in out and "own overhead" in out
    stack_operators, bare_operators = (int(n) for n in re.findall(r"stack (\d+), bare (\d+)", out)[0])
    assert stack_operators > bare_operators > 0, "the stack makes its batches on the device; the bare loop's are made beforehand"
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith(("supervised ", "mean_teacher "))}
    supervised, mean_teacher = lines["supervised"].split(), lines["mean_teacher"].split()
    # Which timings come out is the machine's business (on tiny networks under load the method's timed minimum
    # may not exceed supervised's, and then it has no own overhead); the table's shape is not.
    assert supervised[2] == "1.00" and supervised[5] == "-"
    assert len(mean_teacher) >= 11 and float(mean_teacher[2]) > 0
    forward, backward, data = (float(v) for v in mean_teacher[6:9])
    assert forward > 0 and backward > 0 and data > 0, "the profiler split the step"
    assert "teacher:" in lines["mean_teacher"], "the recorded passes include the teacher's forward"
    # Operator counts do not depend on the machine: the step does more than its minimum, and mean_teacher's minimum
    # (a teacher pass and a second student pass) more than supervised's.
    sup_step, sup_min = (int(n) for n in supervised[10].split("/"))
    mt_step, mt_min = (int(n) for n in mean_teacher[10].split("/"))
    assert sup_step > sup_min > 0 and mt_step > mt_min > sup_min


def test_method_table_puts_each_method_against_supervised():
    """Regression: the smoke run asserted an own overhead for mean_teacher, which timings under load can deny."""
    passes = [("student", (4,), True)]
    supervised = ("supervised", _step(0.25, data=0.02, forward=0.10, backward=0.11), 0.20, passes, 300)
    counted = _step(0.65, data=0.05, forward=0.33, backward=0.22)
    counted.operators = 500
    mean_teacher = ("mean_teacher", counted, 0.50, passes + [("teacher", (4,), False)], 430)
    split = ["0.330", "0.220", "0.050", "0.050"]
    for rows, expected in [([supervised, mean_teacher], ["2.60", "0.500", "30%", "23%", *split, "500/430"]),
                           # a timed minimum not above supervised's: no own overhead
                           ([supervised, mean_teacher[:2] + (0.20,) + mean_teacher[3:]],
                            ["2.60", "0.200", "225%", "-", *split, "500/430"]),
                           # operators not counted (a compiled network)
                           ([supervised, mean_teacher[:4] + (None,)], ["2.60", "0.500", "30%", "23%", *split, "-"])]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_method_table(rows, warmup=1, steps=2)
        line = next(l.split() for l in out.getvalue().splitlines() if l.strip().startswith("mean_teacher "))
        assert line[2:11] == expected
        assert line[11:] == ["student:4g,", "teacher:4"]


def test_method_prefixed_overrides_apply_to_that_method_only():
    from ssl_bench.tools.perf import split_overrides
    common, per_method = split_overrides(["model.channels=[4,8,16]", "bcp:method.stage1_fraction=0",
                                          "unimatch:method.strong_views=1", "run.tag=a:b"])
    assert common == ["model.channels=[4,8,16]", "run.tag=a:b"]
    assert per_method == {"bcp": ["method.stage1_fraction=0"], "unimatch": ["method.strong_views=1"]}


def test_the_minimum_follows_the_passes_each_step_made(synthetic_cache):
    """bcp's step changes at its stage switch (here at step 2 of 4): the minimum of each round is held to the passes
    its step made (recorded on the live module), not to those of a step-0 module."""
    from ssl_bench.config import load_config
    from ssl_bench.tools.perf import MinimumRound, stack_step_breakdown
    cfg = load_config("bcp", "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY, "trainer.max_steps=4",
                                           "method.stage1_fraction=0.5", "logging.wandb=false"])
    _, minimum, round_ = stack_step_breakdown(cfg, 1, 3, MinimumRound, profile=False)
    networks = [{name for name, _, _ in passes} for passes in round_.history]
    assert networks == [{"student"}, {"student"}, {"student", "teacher"}, {"student", "teacher"}]
    teacher_pass = next(p for p in round_.history[-1] if p[0] == "teacher")
    assert teacher_pass[2] is False, "the teacher's pass is recorded without gradients"
    assert minimum > 0


def test_the_stack_steps_with_a_runs_per_step_callbacks_its_csv_log_and_its_progress_bar(synthetic_cache, monkeypatch):
    """What a run does at every step besides its arithmetic is part of the stack's time."""
    import lightning.pytorch as pl
    from ssl_bench.config import load_config
    from ssl_bench.run.callbacks import StepTimer
    from ssl_bench.run.console import RunCSVLogger, StepProgressBar
    from ssl_bench.run.train import step_callbacks
    from ssl_bench.tools import perf

    made = []

    class Recorded(pl.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(perf.pl, "Trainer", Recorded)
    cfg = load_config("supervised", "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY, "logging.wandb=false",
                                                  "trainer.enable_progress_bar=true"])
    perf.stack_step_breakdown(cfg, 1, 2, profile=False)
    trainer, = made
    kinds = {type(c) for c in trainer.callbacks}
    assert {type(c) for c in step_callbacks(StepTimer())} | {StepProgressBar, perf._StepClock} <= kinds
    assert isinstance(trainer.logger, RunCSVLogger)


def test_bcp_is_timed_in_the_stage_that_dominates_its_budget_unless_told_otherwise():
    """Stage 2 holds 3/4 of bcp's budget (method.stage1_fraction 0.25): make perf times it from step 0, as
    method.stage1_fraction=0; a stage1_fraction given to perf (common or bcp:...) is kept, as is the control."""
    from ssl_bench.config import load_config
    from ssl_bench.registry import get_method
    from ssl_bench.tools.perf import method_config
    stage_two = get_method("bcp").unlabeled_stage_at
    cfg, dominant = method_config("bcp", "synthetic", TINY)
    assert dominant == ["method.stage1_fraction=0"] and stage_two(cfg, 0) and cfg.method.stage1_fraction == 0
    assert load_config("bcp", "synthetic").method.stage1_fraction == 0.25  # the run's own config is untouched
    for given in (["method.stage1_fraction=0.5"], ["method.unlabeled_stage=false"], ["method.stage1_fraction=0.75"]):
        cfg, dominant = method_config("bcp", "synthetic", [*TINY, *given])
        assert dominant == [] and not stage_two(cfg, 0), given
    cfg, dominant = method_config("mean_teacher", "synthetic", TINY)
    assert dominant == [] and cfg == load_config("mean_teacher", "synthetic", ["logging.wandb=false", *TINY])


def test_timed_steps_whose_passes_are_not_the_declared_ones_are_flagged():
    from ssl_bench.config import load_config
    from ssl_bench.tools.perf import undeclared_steps
    cfg = load_config("mean_teacher", "synthetic")  # L = U = 2: student L then U, teacher U
    shape = (2, 1, 8, 8, 8)
    declared = (("student", shape, True), ("student", shape, True), ("teacher", shape, False))
    extra = declared + (("teacher", shape, False),)
    round_ = SimpleNamespace(history=[declared, declared, extra, declared], live=True)
    assert undeclared_steps(cfg, round_, range(1, 4)) == [2]


def test_perf_times_bcp_in_its_second_stage(synthetic_cache, capsys):
    overrides = [f"data.cache_dir={synthetic_cache}", *TINY]
    assert main(["--data", "synthetic", "--methods", "bcp", "--steps", "2", "--warmup", "1", *overrides]) == 0
    out = capsys.readouterr().out
    assert "bcp: timed with method.stage1_fraction=0" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("bcp "))
    assert "teacher:2" in line and "student:2g" in line, "stage 2: the teacher's pass, the student on L mixed images"
    assert "declares" not in out
