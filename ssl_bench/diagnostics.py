"""Does a method's unsupervised term move the network? ``ssl-bench diagnose RUN_DIR``.

Loads a run at its last checkpoint and, on a few training batches drawn the way training draws them,
takes the gradient of the supervised loss and of the weighted unsupervised term λ(t)·L_unsup (λ at the
checkpoint's step) with respect to the trained parameters: their norms, the ratio of the two and their
cosine. A ratio of 1% means that, step for step, the semi-supervised method trains almost exactly like its
supervised baseline: the first thing to check when a method does not beat ``supervised``.

Methods with manual optimization (``adversarial``) have no single unsupervised term and are refused.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import List, Optional

import torch
from omegaconf import OmegaConf

from ssl_bench.config import ConfigError
from ssl_bench.utils.ramps import sigmoid_rampup


@dataclass
class GradientBalance:
    """One batch: the two loss terms and the norms and cosine of their gradients."""
    loss_sup: float
    loss_unsup: float
    weight: float  # λ(t)
    grad_sup: float  # ||∇ L_sup||
    grad_unsup: float  # ||∇ λ(t)·L_unsup||
    cosine: float

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
    g_sup = _flat_gradient(loss_sup, params, retain_graph=True)
    g_unsup = _flat_gradient(weight * loss_unsup, params)
    norm_sup, norm_unsup = float(g_sup.norm()), float(g_unsup.norm())
    cosine = float(g_sup @ g_unsup) / (norm_sup * norm_unsup) if norm_sup > 0 and norm_unsup > 0 else float("nan")
    return GradientBalance(float(loss_sup.detach()), float(loss_unsup.detach()), weight, norm_sup, norm_unsup, cosine)


def load_run_config(run: Path, overrides: Optional[List[str]] = None):
    """A run folder's config.yaml over today's schema (keys added since keep their defaults), then overrides."""
    from ssl_bench.config import load_config, merge_checked
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"{run} is not a run folder (no config.yaml)")
    saved = OmegaConf.load(saved_path)
    cfg = merge_checked(load_config(saved.method.name, saved.data.name), saved, str(saved_path))
    return merge_checked(cfg, OmegaConf.from_dotlist(list(overrides or [])), "command-line override")


def diagnose(run: Path, n_batches: int, overrides: Optional[List[str]] = None) -> List[GradientBalance]:
    from ssl_bench.registry import get_method
    from ssl_bench.train import CHECKPOINTS, LAST, prepare_data

    cfg = load_run_config(run, overrides)
    method_cls = get_method(cfg.method.name)
    checkpoint_path = run / CHECKPOINTS / LAST
    if not checkpoint_path.is_file():
        raise ConfigError(f"{run} has no checkpoint ({checkpoint_path} is missing)")
    data = prepare_data(cfg, method_cls, evaluation=False)
    dm, manifest = data.datamodule(cfg, method_cls), data.manifest
    module = method_cls(cfg, class_names=manifest.labels, case_ids=[c.id for c in manifest.cases])
    if not module.automatic_optimization:
        raise ConfigError(f"{cfg.method.name} optimizes manually (several losses and optimizers): not diagnosed")
    if "lambda_max" not in cfg.method:  # SemiSupervisedConfig: the methods that add λ(t)·L_unsup
        raise ConfigError(f"{cfg.method.name} has no unsupervised term to diagnose")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    module.train()
    rampup_steps = cfg.method.rampup_fraction * cfg.trainer.max_steps
    weight = cfg.method.lambda_max * sigmoid_rampup(checkpoint["global_step"], rampup_steps)
    torch.manual_seed(cfg.data.draw)
    batches = iter(dm.train_dataloader())
    results = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: a method's logging is a no-op
        for _ in range(n_batches):
            batch, *_ = next(batches)
            results.append(gradient_balance(module, batch, weight))
    return results


def format_balance(run: Path, results: List[GradientBalance]) -> str:
    lines = [f"{run}: gradients at the last checkpoint, λ(t) = {results[0].weight:.4g}",
             "  batch     L_sup   λ·L_unsup  |∇L_sup|  |∇λ·L_unsup|   ratio  cosine"]
    for i, r in enumerate(results):
        lines.append(f"  {i:5d}  {r.loss_sup:8.4f}  {r.weight * r.loss_unsup:10.3e}  {r.grad_sup:8.4f}  "
                     f"{r.grad_unsup:12.3e}  {r.ratio:6.3f}  {r.cosine:+.3f}")
    lines.append(f"  median ratio |∇λ·L_unsup| / |∇L_sup|: {median(r.ratio for r in results):.3f}")
    return "\n".join(lines)
