"""Input perturbation shared by the consistency methods."""

from __future__ import annotations

import torch


def add_clipped_noise(images: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """images + η, η ~ N(0, std²) drawn independently per voxel and clipped to [-clip, clip].

    The config defaults (std 0.1, clip 0.2) are Yu et al. 2019's; clipping keeps a rare large draw from
    turning a voxel into a different tissue.
    """
    return images + (torch.randn_like(images) * std).clamp_(-clip, clip)
