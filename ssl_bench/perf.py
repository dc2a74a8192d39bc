"""``make perf``: training-step throughput of the full stack against a bare PyTorch loop, in one run.

Part 1, the supervised step: the stack is exactly what ``ssl-bench train`` runs (Lightning Trainer + SegmentationDataModule with
its MONAI transforms + the method's training_step, logging included; validation and checkpoints off).
The bare loop is the same network, loss, optimizer, schedule, batch and patch, fed batches prepared
in advance, so the ratio is the price of everything around the arithmetic. The bare loop runs
before and after the stack and its mean is used, so drifting machine load hits both sides alike.

Part 2, every method: seconds per step through the same stack, relative to supervised and to the
method's analytic minimum (its network passes and one step of each optimizer, timed alone), and the time its
data loading takes (the batches a step draws, fetched alone): with ``data.num_workers=0`` the stack loads and
augments them in the training process, so that much of a step's overhead is loading, not the method.
"""

from __future__ import annotations

import argparse
import time
from typing import List, Tuple

import lightning.pytorch as pl
import torch

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


def stack_steps_per_second(cfg, warmup: int, steps: int) -> float:
    manifest, method_cls, dm = _setup(cfg)
    pl.seed_everything(0)
    module = method_cls(cfg, manifest.labels, [c.id for c in manifest.cases])
    timer = _WindowTimer(warmup)
    trainer = pl.Trainer(max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                         log_every_n_steps=cfg.trainer.log_every_n_steps, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    return steps / (timer.end - timer.start)


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
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

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


def data_seconds_per_step(cfg, fetches: int) -> float:
    """Seconds to draw the batches of one training step (labeled, plus unlabeled for methods that use them)
    from the method's data module, transforms included, in this process as the stack does with
    data.num_workers=0; after one warm-up fetch."""
    _, _, dm = _setup(cfg)
    loader = iter(dm.train_dataloader())
    next(loader)
    start = time.perf_counter()
    for _ in range(fetches):
        next(loader)
    return (time.perf_counter() - start) / fetches


def compare_methods(methods: List[str], data: str, overrides: List[str], warmup: int, steps: int) -> None:
    """Seconds per step of each method through the stack, relative to supervised and to its analytic minimum."""
    rows = []
    for name in methods:
        cfg = load_config(name, data, ["logging.wandb=false", *overrides])
        per_step = 1.0 / stack_steps_per_second(cfg, warmup, steps)
        minimum, passes = analytic_minimum_seconds(cfg, repeats=max(3, steps // 4))
        rows.append((name, per_step, minimum, data_seconds_per_step(cfg, fetches=max(3, steps)), passes))
    print_method_table(rows, warmup, steps)


def print_method_table(rows, warmup: int, steps: int) -> None:
    """One line per (name, seconds per step, analytic minimum, data seconds, passes) row, against the supervised
    row if any. A method whose timed minimum is not above supervised's (tiny networks under load) gets no own
    overhead."""
    reference = next((row[1:4] for row in rows if row[0] == "supervised"), None)
    print(f"\nseconds per training step ({steps} timed steps after {warmup} warm-up; minimum = the method's network "
          "passes and one step of each optimizer, each timed alone; data = loading and augmenting the step's "
          "batches, alone; overhead = beyond the minimum; not data = the part of it that is not data loading; "
          "own overhead = the method's extra seconds over supervised, less its extra data time, against its "
          "extra minimum, so the stack's share, which supervised pays too, is left out)")
    print(f"  {'method':24s} {'s/step':>8s} {'x supervised':>13s} {'minimum s':>10s} {'data s':>7s} {'overhead':>9s}"
          f" {'not data':>9s} {'own overhead':>13s}  passes (network: batch, g = with gradients)")
    for name, per_step, minimum, data, passes in rows:
        ratio = f"{per_step / reference[0]:13.2f}" if reference else f"{'-':>13s}"
        own = (f"{own_overhead(per_step, minimum, data, *reference):12.0%}" if reference and minimum > reference[1]
               else f"{'-':>12s}")
        listed = ", ".join(f"{n}:{shape[0]}{'g' if g else ''}" for n, shape, g in passes)
        print(f"  {name:24s} {per_step:8.3f} {ratio} {minimum:10.3f} {data:7.3f} {per_step / minimum - 1:8.0%} "
              f"{(per_step - data) / minimum - 1:8.0%} {own}  {listed}")


def own_overhead(per_step: float, minimum: float, data: float, reference_per_step: float, reference_minimum: float,
                 reference_data: float) -> float:
    """The method's extra seconds per step over the reference (supervised), less its extra data loading (the
    unlabeled batch), relative to the extra network work its analytic minimum says it must do, minus one: what
    the method itself adds beyond its passes and its data, with the stack's cost (Lightning, the labeled data,
    the supervised loss), which the reference pays too, left out."""
    return ((per_step - data) - (reference_per_step - reference_data)) / (minimum - reference_minimum) - 1


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
    stack = stack_steps_per_second(cfg, args.warmup, args.steps)
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
