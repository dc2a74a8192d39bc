"""``make perf``: training-step throughput of the full stack against a bare PyTorch loop, in one run.

Part 1, the supervised step: the stack is exactly what ``ssl-bench train`` runs (Lightning Trainer + SegmentationDataModule with
its augmentation + the method's training_step, logging, the CSV log, the per-step callbacks and the progress bar
included; validation and checkpoints off).
The bare loop is the same network, loss, optimizer, schedule, batch and patch, fed batches prepared
in advance, so the ratio is the price of everything around the arithmetic. One bare step runs after each
stack step (outside its time), so a machine whose speed drifts hits both sides alike.

Part 2, every method: seconds per step through the same stack, relative to supervised and to the
method's analytic minimum (its network passes and one step of each optimizer), and where the step's time goes,
from Lightning's SimpleProfiler over the same timed steps: training_step (forward passes and losses), backward,
data (loading the batches, moving them to the device and augmenting them there; with ``data.num_workers=0`` the
loading too is in the training process) and the rest
(optimizer, EMA and other step-end work, Lightning). The minimum is timed between the timed steps (after each,
outside its time), on the trained networks: a machine whose speed drifts within seconds (this project's shared
VM drifts by more than the 15% target) slows a step and its minimum alike, so their ratio holds. A method whose
step changes over its run is timed in the phase that holds most of its budget (its perf_overrides: bcp's second
stage), and a timed step whose passes are not the method's declared ones (forward_passes) is flagged.

Both parts also count the tensor operators of one step, after the timed ones, and of its bare step or minimum
(ssl_bench/tools/operator_count.py): on a GPU where a small network's step is bound by the host queueing kernels,
the count its time follows, and the same on every machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler

from ssl_bench.config import load_config
from ssl_bench.registry import get_method, method_names
from ssl_bench.run.callbacks import StepTimer
from ssl_bench.run.console import RunCSVLogger, StepProgressBar, quiet_lightning
from ssl_bench.run.train import prepare_data, step_callbacks
from ssl_bench.tools.gpu_check import device_name
from ssl_bench.tools.operator_count import OperatorCount


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock(pl.Callback):
    """Seconds of each training step after ``warmup`` ones: from the end of the previous step to the end of
    this one, so each holds one batch fetch. ``between_steps(trainer, module)``, if given, runs after every step,
    outside the steps' time, and returns seconds of its own; those of the timed steps are kept too.

    With ``timed`` steps given and ``count_operators``, the step after them is not timed but has its operators
    counted (operator_count.py: a dispatch mode slows the step it watches), from the end of the last timed step to
    its own end, as a timed step spans; then those of its between-steps work."""

    def __init__(self, warmup: int, between_steps: Optional[Callable] = None,
                 clock: Callable[[], float] = time.perf_counter, timed: Optional[int] = None,
                 count_operators: bool = False):
        self.warmup, self.between_steps, self.clock, self.timed = warmup, between_steps, clock, timed
        self.count_operators = count_operators and timed is not None
        self.step_seconds: List[float] = []
        self.between_seconds: List[float] = []
        self.step_operators: Optional[OperatorCount] = None
        self.between_operators: Optional[OperatorCount] = None
        self._calls, self._resumed, self._counting = 0, None, False

    def on_train_start(self, trainer, pl_module):
        self._resumed = self.clock()  # without warm-up the first step holds the loader's start too

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _synchronize(pl_module.device)
        end = self.clock()
        timed = self._calls >= self.warmup and (self.timed is None or self._calls < self.warmup + self.timed)
        counted = self.count_operators and self._calls == self.warmup + self.timed
        if counted:
            self._stop_counting()
        if timed:
            self.step_seconds.append(end - self._resumed)
        self._calls += 1
        if self.between_steps is not None:
            if counted:
                self.between_operators = OperatorCount()
                with self.between_operators:
                    self.between_steps(trainer, pl_module)
            else:
                seconds = self.between_steps(trainer, pl_module)  # in warm-up steps too: its own warm-up
                if timed:
                    self.between_seconds.append(seconds)
        if self.count_operators and self._calls == self.warmup + self.timed:
            self.step_operators = OperatorCount().__enter__()  # the next step, after the last timed one
            self._counting = True
        self._resumed = self.clock()

    def _stop_counting(self) -> None:
        if self._counting:
            self.step_operators.__exit__(None, None, None)
            self._counting = False

    def on_exception(self, trainer, pl_module, exception):
        self._stop_counting()  # a dispatch mode left on would watch everything the process does next

    def teardown(self, trainer, pl_module, stage):
        self._stop_counting()


Pass = Tuple[str, Tuple[int, ...], bool]  # (network, input shape, with gradients)


def _new_module(cfg, manifest, method_cls):
    return method_cls(cfg, manifest.labels, [c.id for c in manifest.cases])


def _setup(cfg):
    method_cls = get_method(cfg.method.name)
    data = prepare_data(cfg, method_cls)
    return data.manifest, method_cls, data.datamodule(cfg, method_cls)


@dataclass
class StepBreakdown:
    """Seconds per training step through the stack, and its parts (means over the timed steps)."""
    per_step: float
    # training_step: the forward passes and losses; for a manual-optimization method also its backward passes
    # and optimizer steps, which Lightning's profiler does not time apart (manual_backward is not profiled).
    forward: float
    backward: float  # NaN for manual optimization (inside forward)
    data: float
    # Operators that do work on tensors in one step (operator_count.py), the batch's making included; None where
    # not counted (compiled networks).
    operators: Optional[int] = None

    @property
    def other(self) -> float:
        """Optimizer and scheduler steps, step-end work (e.g. EMA updates), Lightning's own."""
        return self.per_step - self.forward - (0.0 if math.isnan(self.backward) else self.backward) - self.data


def breakdown_from_profile(durations: Dict[str, List[float]], per_step: float, steps: int,
                           automatic_optimization: bool = True, untimed_after: int = 0) -> StepBreakdown:
    """A StepBreakdown from SimpleProfiler.recorded_durations (action name -> seconds per call), over the ``steps``
    calls of each action before its last ``untimed_after`` ones (the timed window)."""
    def mean_of(predicate) -> float:
        found = [d for name, d in durations.items() if predicate(name)]
        return sum(statistics.fmean(d[len(d) - untimed_after - steps:len(d) - untimed_after]) for d in found if d)

    forward = mean_of(lambda n: n.startswith("[Strategy]") and n.endswith(".training_step"))
    backward = (mean_of(lambda n: n.startswith("[Strategy]") and n.endswith(".backward")) if automatic_optimization
                else math.nan)
    # Data: the loader's batch, then its move to the device, where data.augment_on_device makes the patches.
    data = mean_of(lambda n: n.endswith("train_dataloader_next") or (n.startswith("[Strategy]")
                                                                     and n.endswith(".batch_to_device")))
    return StepBreakdown(per_step, forward, backward, data)


def stack_step_breakdown(cfg, warmup: int, steps: int, between_steps=None, profile: bool = True,
                         count_operators: bool = True):
    """The step through the stack (a StepBreakdown) and, with ``between_steps`` (a class such as MinimumRound or
    BareStep, built from ``(cfg, manifest, method_cls, datamodule)``), the mean seconds of its work, done after each
    timed step, and the object built (None and None without). Without ``profile`` the step runs as in
    ``ssl-bench train``, without the profiler's own cost (it wraps every hook), and its parts are NaN. With
    ``count_operators`` (not with a compiled network) one more step, after the timed ones, counts the operators of a
    step and of the between-steps work (the object's ``operators``)."""
    manifest, method_cls, dm = _setup(cfg)
    between = between_steps(cfg, manifest, method_cls, dm) if between_steps else None
    pl.seed_everything(0)
    module = _new_module(cfg, manifest, method_cls)
    # The counted step and one more after the timed ones (so that the counted one fetches the next batch as every
    # step does), within the data stream of the configured budget.
    counting = count_operators and cfg.trainer.compile == "none" and warmup + steps + 2 <= cfg.trainer.max_steps
    clock = _StepClock(warmup, between, timed=steps, count_operators=counting)
    # What a run does at every step besides its arithmetic: its per-step callbacks, its CSV log and its progress bar
    # (redrawn as in this console, into the void), validation and checkpoints aside.
    callbacks = [clock, *step_callbacks(StepTimer())]
    with tempfile.TemporaryDirectory() as work, open(os.devnull, "w") as void:
        if cfg.trainer.enable_progress_bar:
            callbacks.append(StepProgressBar(file=void))
        profiler = SimpleProfiler(dirpath=work, filename="profile") if profile else None  # its report is not needed
        trainer = pl.Trainer(max_steps=warmup + steps + (2 if counting else 0), max_epochs=-1, limit_val_batches=0,
                             logger=RunCSVLogger(Path(work)), enable_checkpointing=False,
                             enable_progress_bar=cfg.trainer.enable_progress_bar, enable_model_summary=False,
                             accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                             benchmark=cfg.trainer.cudnn_benchmark,
                             log_every_n_steps=cfg.trainer.log_every_n_steps, callbacks=callbacks, profiler=profiler)
        trainer.fit(module, datamodule=dm)
    per_step = statistics.fmean(clock.step_seconds)
    operators = clock.step_operators.total if clock.step_operators is not None else None
    if profiler is None:
        step = StepBreakdown(per_step, math.nan, math.nan, math.nan, operators)
    else:
        step = breakdown_from_profile(profiler.recorded_durations, per_step, steps, module.automatic_optimization,
                                      untimed_after=2 if counting else 0)
        step.operators = operators
    if between is not None and clock.between_operators is not None:
        between.operators = clock.between_operators.total
    return step, (statistics.fmean(clock.between_seconds) if between else None), between


class BareStep:
    """One step of a plain PyTorch loop per call, between the stack's steps: its own copy of the network, DiceCE,
    AdamW + schedule, on labeled batches prepared beforehand (nothing of the stack: no Trainer, no data loading,
    no logging). It runs with the stack's execution options, so the ratio compares like with like: the same
    trainer.compile mode, and bf16 autocast under trainer.precision=bf16-mixed."""
    operators: Optional[int] = None  # of one step, where stack_step_breakdown counted them

    def __init__(self, cfg, manifest, method_cls, dm, prepared: int = 16):
        module = _new_module(cfg, manifest, method_cls)
        self.net, self.loss_fn = module.net.train(), module.dice_ce
        if cfg.trainer.compile != "none":
            self.net.compile(mode=None if cfg.trainer.compile == "default" else cfg.trainer.compile)
        self.bf16 = cfg.trainer.precision.startswith("bf16")
        configured = module.configure_optimizers()
        self.optimizer, self.scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
        loader = dm.training_batches()
        self.batches = []
        for _ in range(prepared):
            batch = next(loader)
            self.batches.append((batch["labeled"]["image"].as_subclass(torch.Tensor),
                                 batch["labeled"]["label"].as_subclass(torch.Tensor)))
        self.calls = 0

    def __call__(self, trainer, module) -> float:
        device = module.device
        self.net.to(device)
        image, label = (t.to(device) for t in self.batches[self.calls % len(self.batches)])
        self.calls += 1
        _synchronize(device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_fn(self.net(image), label)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        _synchronize(device)
        return time.perf_counter() - start


def _recorded_passes(module, batch) -> List[Pass]:
    """The network passes one training step makes. A manual-optimization method's step is its pure
    ``losses(batch)`` (its training_step needs a Trainer to step its optimizers)."""
    passes: List[Pass] = []
    handles = [net.register_forward_pre_hook(
        lambda m, args, key=name: passes.append((key, tuple(args[0].shape), torch.is_grad_enabled())))
        for name, net in module.training_networks().items()]
    module.log = lambda *args, **kwargs: None  # no trainer here to log into
    try:
        if module.automatic_optimization:
            module.training_step(batch, 0)
        else:
            module.losses(batch)
    finally:
        for h in handles:
            h.remove()
    return passes


class MinimumRound:
    """The method's analytic minimum, one round per call on the trained module's own networks: the network passes
    the step just made (forward, plus backward of its sum for a pass with gradients) on random inputs of their
    shapes, then one step of each of the trainer's optimizers. The passes are recorded on the live module by
    forward pre-hooks, step by step, so a method whose step changes with the step count (bcp's two stages) is held
    against the passes it made; a compiled network is not hooked (a hook would recompile it), and then the passes
    are those of a step by a throwaway module at step 0. A round starts from no gradients, as a step does (its
    backward writes them instead of adding to the last round's, one more operator per parameter); its weight changes do
    not matter: a few odd updates do not change what a step costs.
    The forward calls themselves are the method's declared ones (forward_passes), which
    tests/test_methods.py holds every step to and compare_methods checks the timed steps against."""
    operators: Optional[int] = None  # of one round, where stack_step_breakdown counted them

    def __init__(self, cfg, manifest, method_cls, dm):
        self.bf16 = cfg.trainer.precision.startswith("bf16")  # the passes run as the step runs them
        self.live = cfg.trainer.compile == "none"
        batch = next(dm.training_batches())
        self.passes: List[Pass] = _recorded_passes(_new_module(cfg, manifest, method_cls).train(), batch)  # last step's
        self.history: List[Tuple[Pass, ...]] = []  # the passes of each round, in order
        self._recorded: List[Pass] = []
        self._watching = False
        self._inputs: Dict[Tuple[int, ...], torch.Tensor] = {}

    def _watch(self, module) -> None:
        for name, net in module.training_networks().items():
            net.register_forward_pre_hook(
                lambda m, args, key=name: self._recorded.append((key, tuple(args[0].shape), torch.is_grad_enabled())))
        self._watching = True

    def __call__(self, trainer, module) -> float:
        networks, device = module.training_networks(), module.device
        if self._watching:
            self.passes, self._recorded = self._recorded, []
        elif self.live:  # from the next step on; this round (a warm-up one) has the throwaway module's passes
            self._watch(module)
        self.history.append(tuple(self.passes))
        xs = [self._input(shape, device) for _, shape, _ in self.passes]
        _synchronize(device)
        start = time.perf_counter()
        for optimizer in trainer.optimizers:
            optimizer.zero_grad(set_to_none=True)  # as a step starts: its backward writes the gradients, adds nothing
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for (name, _, with_grad), x in zip(self.passes, xs):
                if with_grad:
                    networks[name](x).float().sum().backward()
                else:
                    with torch.no_grad():
                        networks[name](x)
        for optimizer in trainer.optimizers:
            optimizer.step()
        _synchronize(device)
        seconds = time.perf_counter() - start
        self._recorded = []  # what the hooks saw of this round's own passes
        return seconds

    def _input(self, shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
        if shape not in self._inputs:
            self._inputs[shape] = torch.randn(shape, device=device)
        return self._inputs[shape]


def split_overrides(overrides: List[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """Overrides for every run, and those written ``METHOD:key=value`` for that method's run only (e.g.
    ``bcp:method.stage1_fraction=0.5`` times bcp's first stage, which by default it is not: method_config)."""
    common, per_method = [], {}
    for item in overrides:
        name, sep, rest = item.partition(":")
        if sep and "=" not in name:
            per_method.setdefault(name, []).append(rest)
        else:
            common.append(item)
    return common, per_method


def method_config(name: str, data: str, given: List[str]) -> Tuple[object, List[str]]:
    """The config ``name`` is timed with: the ``given`` overrides, after the method's perf_overrides (the phase that
    dominates its budget, e.g. bcp's stage 2) for the keys not given; and those perf_overrides applied."""
    cfg = load_config(name, data, ["logging.wandb=false", *given])
    keys = {item.split("=", 1)[0] for item in given}
    dominant = [o for o in get_method(name).perf_overrides(cfg) if o.split("=", 1)[0] not in keys]
    if dominant:
        cfg = load_config(name, data, ["logging.wandb=false", *dominant, *given])
    return cfg, dominant


def undeclared_steps(cfg, round_: "MinimumRound", timed: range) -> List[int]:
    """The timed steps whose recorded passes are not the method's declared ones (its forward_passes at that step;
    a compiled network is not hooked, and then every round holds the passes of step 0, compared with step 0's)."""
    method_cls = get_method(cfg.method.name)
    out = []
    for step in timed:
        recorded: Dict[str, List[int]] = {}
        for network, shape, _ in round_.history[step]:
            recorded.setdefault(network, []).append(shape[0])
        if recorded != method_cls.forward_passes(cfg, step if round_.live else 0):
            out.append(step)
    return out


def compare_methods(methods: List[str], data: str, overrides: List[str], warmup: int, steps: int) -> None:
    """Seconds per step of each method through the stack, relative to supervised and to its analytic minimum."""
    common, per_method = split_overrides(overrides)
    rows, notes = [], []
    for name in methods:
        cfg, dominant = method_config(name, data, [*common, *per_method.get(name, [])])
        if dominant:
            notes.append(f"  {name}: timed with {' '.join(dominant)}, the phase of most of its budget "
                         f"({name}:<key>=<value> overrides it)")
        step, minimum, round_ = stack_step_breakdown(cfg, warmup, steps, MinimumRound)
        rows.append((name, step, minimum, round_.passes, round_.operators))
        timed = range(warmup, warmup + steps)
        kinds = len(set(round_.history[timed.start:timed.stop]))
        if kinds > 1:
            notes.append(f"  {name}: its passes changed within the timed steps ({kinds} kinds; its minimum follows "
                         "them step by step; the passes column shows the last step's)")
        undeclared = undeclared_steps(cfg, round_, timed)
        if undeclared:
            notes.append(f"  {name}: {len(undeclared)} timed step(s) made other passes than the method declares "
                         f"(forward_passes), first at step {undeclared[0]}")
    print_method_table(rows, warmup, steps)
    if notes:
        print("\n".join(notes))


def print_method_table(rows, warmup: int, steps: int) -> None:
    """One line per (name, StepBreakdown, analytic minimum, passes, operators of a minimum round) row, against the
    supervised row if any. A method whose timed minimum is not above supervised's (tiny networks under load) gets no
    own overhead."""
    reference = next(((step, minimum) for name, step, minimum, *_ in rows if name == "supervised"), None)
    print(f"\nseconds per training step ({steps} timed steps after {warmup} warm-up; minimum = the method's network "
          "passes and one step of each optimizer, timed after each timed step (same moments, so drift cancels); overhead = beyond the minimum; own overhead = "
          "the method's extra seconds over supervised, less its extra data time, against its extra minimum, so "
          "the stack's share, which supervised pays too, is left out; then the step split, from the profiler: "
          "training_step (forwards and losses; for manual optimization also its backward passes and optimizer "
          "steps, so no backward column), backward, data, and other = optimizer, step-end work such as EMA "
          "updates, Lightning; ops = tensor operators of one step / of its minimum, views aside, the same on "
          "every machine: on a launch-bound GPU each launches a kernel)")
    print(f"  {'method':24s} {'s/step':>8s} {'x supervised':>13s} {'minimum s':>10s} {'overhead':>9s} "
          f"{'own overhead':>13s} {'forward':>8s} {'backward':>9s} {'data':>6s} {'other':>6s} {'ops':>11s}"
          "  passes (network: batch, g = with gradients)")
    for name, step, minimum, passes, minimum_operators in rows:
        ratio = f"{step.per_step / reference[0].per_step:13.2f}" if reference else f"{'-':>13s}"
        own = (f"{own_overhead(step, minimum, *reference):12.0%}" if reference and minimum > reference[1]
               else f"{'-':>12s}")
        listed = ", ".join(f"{n}:{shape[0]}{'g' if g else ''}" for n, shape, g in passes)
        print(f"  {name:24s} {step.per_step:8.3f} {ratio} {minimum:10.3f} {step.per_step / minimum - 1:8.0%} {own} "
              f"{step.forward:8.3f} {_seconds(step.backward, 9)} {step.data:6.3f} {step.other:6.3f} "
              f"{_operators(step.operators, minimum_operators):>11s}  {listed}")


def _operators(step: Optional[int], minimum: Optional[int]) -> str:
    return "-" if step is None or minimum is None else f"{step}/{minimum}"


def _seconds(value: float, width: int) -> str:
    return f"{'-':>{width}s}" if math.isnan(value) else f"{value:{width}.3f}"


def own_overhead(step: StepBreakdown, minimum: float, reference: StepBreakdown, reference_minimum: float) -> float:
    """The method's extra seconds per step over the reference (supervised), less its extra data loading (the
    unlabeled batch), relative to the extra network work its analytic minimum says it must do, minus one: what
    the method itself adds beyond its passes and its data, with the stack's cost (Lightning, the labeled data,
    the supervised loss), which the reference pays too, left out."""
    extra = (step.per_step - step.data) - (reference.per_step - reference.data)
    return extra / (minimum - reference_minimum) - 1


def main(argv=None) -> int:
    with quiet_lightning():  # the tables alone, as `ssl-bench train` prints its own lines alone
        return _main(argv)


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hippocampus")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)  # as train() does, for both sides of the comparison
    overrides = ["logging.wandb=false", *args.overrides]
    cfg = load_config("supervised", args.data, split_overrides(overrides)[0])
    # As `ssl-bench train` runs it: no profiler (the method table below profiles every method alike).
    step, bare_seconds, bare_step = stack_step_breakdown(cfg, args.warmup, args.steps, BareStep, profile=False)
    stack, bare = 1.0 / step.per_step, 1.0 / bare_seconds
    d, t = cfg.data, cfg.trainer
    print(f"\ndevice: {device_name()}; torch {torch.__version__}; precision {t.precision}, compile {t.compile}, "
          f"cudnn benchmark {t.cudnn_benchmark}, augmentation on {'device' if d.augment_on_device else 'loader'}, "
          f"{d.num_workers} loader workers")
    print(f"perf on {args.data}: batch {d.labeled_batch_size} labeled (+{d.unlabeled_batch_size} unlabeled) x patch "
          f"{list(d.patch_size)}, {torch.get_num_threads()} threads, {args.steps} timed steps after {args.warmup}")
    print("supervised training step, Lightning stack vs bare PyTorch loop:")
    print(f"  bare PyTorch loop : {bare:7.3f} steps/s  (a bare step after each stack step, so drift hits both alike)")
    print(f"  Lightning stack   : {stack:7.3f} steps/s")
    print(f"  stack / bare      : {stack / bare:7.3f}   (target >= 0.9)")
    if step.operators is not None:
        print(f"  tensor operators a step (views aside; on a launch-bound GPU each launches a kernel): stack "
              f"{step.operators}, bare {bare_step.operators}")
    methods = method_names() if args.methods == "all" else args.methods.split(",")
    compare_methods(methods, args.data, overrides, args.warmup, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
