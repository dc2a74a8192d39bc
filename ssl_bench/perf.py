"""``make perf``: training-step throughput of the full stack against a bare PyTorch loop, in one run.

Part 1, the supervised step: the stack is exactly what ``ssl-bench train`` runs (Lightning Trainer + SegmentationDataModule with
its MONAI transforms + the method's training_step, logging included; validation and checkpoints off).
The bare loop is the same network, loss, optimizer, schedule, batch and patch, fed batches prepared
in advance, so the ratio is the price of everything around the arithmetic. The bare loop runs
before and after the stack and its mean is used, so drifting machine load hits both sides alike.

Part 2, every method: seconds per step through the same stack, relative to supervised and to the
method's analytic minimum (its network passes and one step of each optimizer, timed alone), and where the
step's time goes, from Lightning's SimpleProfiler over the same timed steps: training_step (forward passes and
losses), backward, data (loading and augmenting the batches; with ``data.num_workers=0`` in the training
process) and the rest (optimizer, EMA and other step-end work, Lightning). Split within the same steps, those
shares hold on a machine whose speed drifts between runs, which the ratios to a minimum timed apart do not.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler

from ssl_bench.config import load_config
from ssl_bench.registry import get_method, method_names
from ssl_bench.train import prepare_data


class _WindowTimer(pl.Callback):
    """Wall time from the start of step ``warmup`` to the end of step ``warmup + steps - 1``."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


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

    @property
    def other(self) -> float:
        """Optimizer and scheduler steps, step-end work (e.g. EMA updates), Lightning's own."""
        return self.per_step - self.forward - (0.0 if math.isnan(self.backward) else self.backward) - self.data


def breakdown_from_profile(durations: Dict[str, List[float]], per_step: float, steps: int,
                           automatic_optimization: bool = True) -> StepBreakdown:
    """A StepBreakdown from SimpleProfiler.recorded_durations (action name -> seconds per call), over the last
    ``steps`` calls of each action (the timed window)."""
    def mean_of(predicate) -> float:
        found = [d for name, d in durations.items() if predicate(name)]
        return sum(statistics.fmean(d[-steps:]) for d in found if d)

    forward = mean_of(lambda n: n.startswith("[Strategy]") and n.endswith(".training_step"))
    backward = (mean_of(lambda n: n.startswith("[Strategy]") and n.endswith(".backward")) if automatic_optimization
                else math.nan)
    return StepBreakdown(per_step, forward, backward, mean_of(lambda n: n.endswith("train_dataloader_next")))


def stack_step_breakdown(cfg, warmup: int, steps: int) -> StepBreakdown:
    manifest, method_cls, dm = _setup(cfg)
    pl.seed_everything(0)
    module = method_cls(cfg, manifest.labels, [c.id for c in manifest.cases])
    timer = _WindowTimer(warmup)
    with tempfile.TemporaryDirectory() as report_dir:  # the profiler's own report is not needed
        profiler = SimpleProfiler(dirpath=report_dir, filename="profile")
        trainer = pl.Trainer(max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                             log_every_n_steps=cfg.trainer.log_every_n_steps, callbacks=[timer], profiler=profiler)
        trainer.fit(module, datamodule=dm)
    per_step = (timer.end - timer.start) / steps
    return breakdown_from_profile(profiler.recorded_durations, per_step, steps, module.automatic_optimization)


def bare_steps_per_second(cfg, warmup: int, steps: int) -> float:
    """Plain PyTorch: the same network, DiceCE, AdamW + schedule, on batches prepared beforehand."""
    manifest, method_cls, dm = _setup(cfg)
    pl.seed_everything(0)
    module = method_cls(cfg, manifest.labels, [c.id for c in manifest.cases])
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    net, loss_fn = module.net.to(device).train(), module.dice_ce
    opt_cfg = module.configure_optimizers()
    optimizer, scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    loader = iter(dm.train_dataloader())
    batches: List = []
    for _ in range(min(warmup + steps, 16)):
        batch, _, _ = next(loader)
        batches.append((batch["labeled"]["image"].to(device), batch["labeled"]["label"].to(device)))
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        image, label = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(image), label)
        loss.backward()
        optimizer.step()
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


Pass = Tuple[str, Tuple[int, ...], bool]  # (network, input shape, with gradients)


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


def _optimizers(configured) -> list:
    """The optimizers of a configure_optimizers() result: one config dict, or a list of dicts or optimizers."""
    items = configured if isinstance(configured, (list, tuple)) else [configured]
    return [c["optimizer"] if isinstance(c, dict) else c for c in items]


def analytic_minimum_seconds(cfg, repeats: int) -> Tuple[float, List[Pass]]:
    """Seconds of the network passes a step of this method must make (forward, plus backward for passes
    with gradients) and one step of each optimizer, each timed alone on the bare network: the floor that the
    method's whole step is compared with. The forward calls themselves are pinned to their analytic
    count by tests/test_methods.py::test_forward_calls_per_training_step."""
    manifest, method_cls, dm = _setup(cfg)
    module = method_cls(cfg, manifest.labels, [c.id for c in manifest.cases]).train()
    batch, _, _ = next(iter(dm.train_dataloader()))
    passes = _recorded_passes(module, batch)
    networks = module.training_networks()
    optimizers = _optimizers(module.configure_optimizers())

    def timed(fn) -> float:
        """The median of ``repeats`` timed calls after a warm-up one: a shared machine's hiccups (a pass timed
        at 1.5x its neighbours) would otherwise inflate the floor that everything is compared with."""
        fn()
        durations = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            durations.append(time.perf_counter() - start)
        return statistics.median(durations)

    total = 0.0
    for name, shape, with_grad in passes:
        x = torch.randn(shape)
        net = networks[name]
        if with_grad:
            total += timed(lambda: net(x).sum().backward())
        else:
            with torch.no_grad():
                total += timed(lambda: net(x))
    for optimizer in optimizers:
        total += timed(optimizer.step)
    return total, passes


def compare_methods(methods: List[str], data: str, overrides: List[str], warmup: int, steps: int) -> None:
    """Seconds per step of each method through the stack, relative to supervised and to its analytic minimum."""
    rows = []
    for name in methods:
        cfg = load_config(name, data, ["logging.wandb=false", *overrides])
        step = stack_step_breakdown(cfg, warmup, steps)
        minimum, passes = analytic_minimum_seconds(cfg, repeats=max(3, steps // 2))
        rows.append((name, step, minimum, passes))
    print_method_table(rows, warmup, steps)


def print_method_table(rows, warmup: int, steps: int) -> None:
    """One line per (name, StepBreakdown, analytic minimum, passes) row, against the supervised row if any. A
    method whose timed minimum is not above supervised's (tiny networks under load) gets no own overhead."""
    reference = next(((step, minimum) for name, step, minimum, _ in rows if name == "supervised"), None)
    print(f"\nseconds per training step ({steps} timed steps after {warmup} warm-up; minimum = the method's network "
          "passes and one step of each optimizer, each timed alone; overhead = beyond the minimum; own overhead = "
          "the method's extra seconds over supervised, less its extra data time, against its extra minimum, so "
          "the stack's share, which supervised pays too, is left out; then the step split, from the profiler: "
          "training_step (forwards and losses; for manual optimization also its backward passes and optimizer "
          "steps, so no backward column), backward, data, and other = optimizer, step-end work such as EMA "
          "updates, Lightning)")
    print(f"  {'method':24s} {'s/step':>8s} {'x supervised':>13s} {'minimum s':>10s} {'overhead':>9s} "
          f"{'own overhead':>13s} {'forward':>8s} {'backward':>9s} {'data':>6s} {'other':>6s}"
          "  passes (network: batch, g = with gradients)")
    for name, step, minimum, passes in rows:
        ratio = f"{step.per_step / reference[0].per_step:13.2f}" if reference else f"{'-':>13s}"
        own = (f"{own_overhead(step, minimum, *reference):12.0%}" if reference and minimum > reference[1]
               else f"{'-':>12s}")
        listed = ", ".join(f"{n}:{shape[0]}{'g' if g else ''}" for n, shape, g in passes)
        print(f"  {name:24s} {step.per_step:8.3f} {ratio} {minimum:10.3f} {step.per_step / minimum - 1:8.0%} {own} "
              f"{step.forward:8.3f} {_seconds(step.backward, 9)} {step.data:6.3f} {step.other:6.3f}  {listed}")


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hippocampus")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)  # as train() does, for both sides of the comparison
    overrides = ["logging.wandb=false", *args.overrides]
    cfg = load_config("supervised", args.data, overrides)
    bare_before = bare_steps_per_second(cfg, args.warmup, args.steps)
    stack = 1.0 / stack_step_breakdown(cfg, args.warmup, args.steps).per_step
    bare_after = bare_steps_per_second(cfg, args.warmup, args.steps)
    bare = (bare_before + bare_after) / 2
    d = cfg.data
    print(f"\nperf on {args.data}: batch {d.labeled_batch_size} labeled (+{d.unlabeled_batch_size} unlabeled) x patch "
          f"{list(d.patch_size)}, {torch.get_num_threads()} threads, {args.steps} timed steps after {args.warmup}")
    print("supervised training step, Lightning stack vs bare PyTorch loop:")
    print(f"  bare PyTorch loop : {bare:7.3f} steps/s  (before {bare_before:.3f}, after {bare_after:.3f})")
    print(f"  Lightning stack   : {stack:7.3f} steps/s")
    print(f"  stack / bare      : {stack / bare:7.3f}   (target >= 0.9)")
    methods = method_names() if args.methods == "all" else args.methods.split(",")
    compare_methods(methods, args.data, overrides, args.warmup, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
