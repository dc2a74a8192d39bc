"""Does a method's unsupervised term move the network? ``ssl-bench diagnose RUN_DIR``.

Loads a run at its last checkpoint and, on a few training batches drawn the way training draws them,
takes the gradient of the supervised loss and of the weighted unsupervised term λ(t)·L_unsup (λ at the
checkpoint's step) with respect to the trained parameters: their norms, the ratio of the two and their
cosine. A ratio of 1% means that, step for step, the semi-supervised method trains almost exactly like its
supervised baseline: the first thing to check when a method does not beat ``supervised``.

A method with manual optimization (``adversarial``) has its segmenter loss split the same way: L_sup against
the rest (its adversarial and self-training terms, each weighted by its own λ), from its pure ``losses(batch,
step)`` at the checkpoint's step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median
from typing import List, Optional

import torch
from omegaconf import OmegaConf

from ssl_bench.config import ConfigError, load_config, merge_checked
from ssl_bench.registry import get_method
from ssl_bench.run.callbacks import CHECKPOINTS, LAST
from ssl_bench.run.train import prepare_data
from ssl_bench.utils.ramps import sigmoid_rampup


@dataclass
class GradientBalance:
    """One batch: the two loss terms and the norms and cosine of their gradients."""
    loss_sup: float
    loss_unsup: float
    weight: Optional[float]  # λ(t); None: the unsupervised terms carry their own weights (manual optimization)
    grad_sup: float  # ||∇ L_sup||
    grad_unsup: float  # ||∇ λ(t)·L_unsup||
    cosine: float

    @property
    def weighted_loss_unsup(self) -> float:
        return self.loss_unsup if self.weight is None else self.weight * self.loss_unsup

    @property
    def ratio(self) -> float:
        return self.grad_unsup / self.grad_sup if self.grad_sup > 0 else float("nan")


def _flat_gradient(loss: torch.Tensor, params: List[torch.Tensor], retain_graph: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def gradient_balance(module, batch: dict, weight: float) -> GradientBalance:
    """The gradients of L_sup and of ``weight``·L_unsup on ``batch`` (as training_step sees it) with respect to
    the module's trained parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    # One cache for both terms, as in training_step: a method may reuse its supervised pass (the Π-model's
    # labeled passes enter its consistency term), so the graph is kept for the second gradient.
    cache: dict = {}
    loss_sup = module.supervised_loss(batch["labeled"], cache)
    loss_unsup = module.unsupervised_loss(batch, cache)
    if loss_unsup is None:
        raise ConfigError(f"{module.cfg.method.name} has no unsupervised term to diagnose")
    return _balance(loss_sup, loss_unsup, weight, params)


def manual_gradient_balance(module, batch: dict, step: int) -> GradientBalance:
    """The same for a manual-optimization method: its segmenter loss at ``step`` split into L_sup and the rest."""
    params = [p for p in module.parameters() if p.requires_grad]
    losses = module.losses(batch, step=step)
    return _balance(losses.supervised, losses.segmenter - losses.supervised, None, params)


def _balance(loss_sup: torch.Tensor, loss_unsup: torch.Tensor, weight: Optional[float], params) -> GradientBalance:
    g_sup = _flat_gradient(loss_sup, params, retain_graph=True)
    g_unsup = _flat_gradient((1.0 if weight is None else weight) * loss_unsup, params)
    norm_sup, norm_unsup = float(g_sup.norm()), float(g_unsup.norm())
    cosine = float(g_sup @ g_unsup) / (norm_sup * norm_unsup) if norm_sup > 0 and norm_unsup > 0 else float("nan")
    return GradientBalance(float(loss_sup.detach()), float(loss_unsup.detach()), weight, norm_sup, norm_unsup, cosine)


def load_run_config(run: Path, overrides: Optional[List[str]] = None):
    """A run folder's config.yaml over today's schema (keys added since keep their defaults), then overrides."""
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"{run} is not a run folder (no config.yaml)")
    saved = OmegaConf.load(saved_path)
    cfg = merge_checked(load_config(saved.method.name, saved.data.name), saved, str(saved_path))
    return merge_checked(cfg, OmegaConf.from_dotlist(list(overrides or [])), "command-line override")


def diagnose(run: Path, n_batches: int, overrides: Optional[List[str]] = None) -> List[GradientBalance]:
    cfg = load_run_config(run, overrides)
    method_cls = get_method(cfg.method.name)
    checkpoint_path = run / CHECKPOINTS / LAST
    if not checkpoint_path.is_file():
        raise ConfigError(f"{run} has no checkpoint ({checkpoint_path} is missing)")
    data = prepare_data(cfg, method_cls, evaluation=False)
    dm, manifest = data.datamodule(cfg, method_cls), data.manifest
    module = method_cls(cfg, class_names=manifest.labels, case_ids=[c.id for c in manifest.cases])
    # SemiSupervisedConfig: the methods that add λ(t)·L_unsup; manual optimization: a segmenter loss to split.
    if module.automatic_optimization and "lambda_max" not in cfg.method:
        raise ConfigError(f"{cfg.method.name} has no unsupervised term to diagnose")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    module.train()
    step = checkpoint["global_step"]
    if module.automatic_optimization:
        weight = cfg.method.lambda_max * sigmoid_rampup(step, cfg.method.rampup_fraction * cfg.trainer.max_steps)
        balance = partial(gradient_balance, weight=weight)
    else:
        balance = partial(manual_gradient_balance, step=step)
    torch.manual_seed(cfg.data.draw)
    batches = dm.training_batches()
    results = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: a method's logging is a no-op
        for _ in range(n_batches):
            batch = next(batches)
            results.append(balance(module, batch))
    return results


def format_balance(run: Path, results: List[GradientBalance]) -> str:
    weight = results[0].weight
    lines = [f"{run}: gradients at the last checkpoint, "
             + (f"λ(t) = {weight:.4g}" if weight is not None else "unsupervised terms weighted by their own λ"),
             "  batch     L_sup   λ·L_unsup  |∇L_sup|  |∇λ·L_unsup|   ratio  cosine"]
    for i, r in enumerate(results):
        lines.append(f"  {i:5d}  {r.loss_sup:8.4f}  {r.weighted_loss_unsup:10.3e}  {r.grad_sup:8.4f}  "
                     f"{r.grad_unsup:12.3e}  {r.ratio:6.3f}  {r.cosine:+.3f}")
    lines.append(f"  median ratio |∇λ·L_unsup| / |∇L_sup|: {median(r.ratio for r in results):.3f}")
    return "\n".join(lines)
