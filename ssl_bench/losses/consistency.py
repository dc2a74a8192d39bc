"""Consistency losses between probability maps, and UA-MT's uncertainty (pure functions)."""

from __future__ import annotations

import math
from typing import Optional

import torch


def probability_mse(probs: torch.Tensor, target: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of (probs - target)² over classes and voxels of two (B, C, *spatial) maps.

    With ``keep`` (a (B, 1, *spatial) bool mask), over the kept voxels only: the sum divided by C times the
    number of kept voxels (Yu et al. 2019), so that keeping every voxel gives the plain mean; 0 if none is kept.
    """
    squared = (probs - target).square()
    if keep is None:
        return squared.mean()
    kept_elements = keep.sum() * probs.shape[1]
    return (squared * keep).sum() / kept_elements.clamp_min(1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """-Σ_c p_c log p_c per voxel of a (B, C, *spatial) probability map, as (B, 1, *spatial); 0·log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(dim=1, keepdim=True)


def uncertainty_threshold(ramp: float, num_classes: int, start: float, end: float) -> float:
    """H(t) = (start + (end - start)·ramp(t))·ln C: the entropy below which a voxel's target is trusted.

    ln C is the largest possible entropy; Yu et al. 2019 go from 0.75 to 1 of it.
    """
    return (start + (end - start) * ramp) * math.log(num_classes)
