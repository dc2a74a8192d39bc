"""``make perf``: training-step throughput of the full stack against a bare PyTorch loop, in one run.

The stack is exactly what ``ssl-bench train`` runs (Lightning Trainer + SegmentationDataModule with
its MONAI transforms + the method's training_step, logging included; validation and checkpoints off).
The bare loop is the same network, loss, optimizer, schedule, batch and patch, fed batches prepared
in advance, so the ratio is the price of everything around the arithmetic. The bare loop runs
before and after the stack and its mean is used, so drifting machine load hits both sides alike.
"""

from __future__ import annotations

import argparse
import time
from typing import List

import lightning.pytorch as pl
import torch

from ssl_bench.config import load_config
from ssl_bench.data.datamodule import SegmentationDataModule
from ssl_bench.data.splits import split_pool
from ssl_bench.data.verify import verify_or_raise
from ssl_bench.registry import get_method
from ssl_bench.train import resolve_dataset


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
    manifest, root = resolve_dataset(cfg)
    method_cls = get_method(cfg.method.name)
    split = split_pool(manifest.pool, cfg.data.fraction, cfg.data.draw)
    infos = verify_or_raise(manifest, root, split.labeled + split.unlabeled + manifest.validation + manifest.test)
    dm = SegmentationDataModule(cfg, manifest, root, split, {i.case_id: i.spacing for i in infos},
                                uses_unlabeled=method_cls.uses_unlabeled)
    return manifest, method_cls, dm


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="hippocampus")
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.method, args.data, ["logging.wandb=false", *args.overrides])
    bare_before = bare_steps_per_second(cfg, args.warmup, args.steps)
    stack = stack_steps_per_second(cfg, args.warmup, args.steps)
    bare_after = bare_steps_per_second(cfg, args.warmup, args.steps)
    bare = (bare_before + bare_after) / 2
    d = cfg.data
    print(f"\nperf: {args.method} on {args.data}, batch {d.labeled_batch_size} x patch {list(d.patch_size)}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {torch.get_num_threads()} threads")
    print(f"  bare PyTorch loop : {bare:7.3f} steps/s  (before {bare_before:.3f}, after {bare_after:.3f})")
    print(f"  Lightning stack   : {stack:7.3f} steps/s")
    print(f"  stack / bare      : {stack / bare:7.3f}   (target >= 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
