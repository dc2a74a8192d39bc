"""Uncertainty-weighted pseudo-labels of multi-view co-training (UMCT, Xia et al. 2020), as pure functions."""

from __future__ import annotations

import torch


def mc_mean_and_confidence(samples: torch.Tensor, epsilon: float):
    """From K MC-dropout softmax maps (K, B, C, *spatial) of one view: their mean (B, C, *spatial) and the
    per-voxel confidence 1 / (Σ_c Var_k p_c + ε) (B, 1, *spatial), the inverse predictive variance (UMCT)."""
    mean = samples.mean(dim=0)
    # Two passes by hand: torch's var over the leading dimension is ~5x slower on CPU (0.39 s against 0.07 s for
    # 8 passes of 4 hippocampus patches, one thread), a third of co_training's step beyond its network passes.
    variance = (samples - mean).square_().mean(dim=0).sum(dim=1, keepdim=True)
    return mean, 1.0 / (variance + epsilon)


def leave_one_out_pseudo_labels(means: torch.Tensor, confidences: torch.Tensor) -> torch.Tensor:
    """Per view v (V, B, C, *spatial): Σ_{j≠v} w_j p̄_j / Σ_{j≠v} w_j, the confidence-weighted average of the
    other views' mean predictions, all in the common orientation. Summed per view rather than as a total minus
    view v's share, which would cancel catastrophically where one view's confidence is ~1/ε."""
    views = means.shape[0]
    targets = []
    for v in range(views):
        others = [j for j in range(views) if j != v]
        weights = confidences[others]
        targets.append((weights * means[others]).sum(dim=0) / weights.sum(dim=0))
    return torch.stack(targets)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of -Σ_c t_c log softmax(logits)_c; the plain CE when ``target`` is one-hot."""
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
