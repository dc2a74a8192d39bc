"""Strong intensity augmentation of weak-to-strong consistency (FixMatch, UniMatch), batched on the device.

Each sample of a (B, C, *spatial) batch gets its own draws, all from the ``generator`` passed in (a training step's
``stream_generator``), so a resumed run augments exactly as the uninterrupted one. In order: contrast, gamma,
Gaussian blur, Gaussian noise, each applied to a sample with its own probability; a sample not drawn for an
operation passes through it unchanged (bit for bit for contrast, gamma and noise; blur uses an identity kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StrongIntensity:
    """Probabilities and ranges; UniMatchConfig documents the defaults and their sources."""
    contrast_prob: float
    contrast_range: float              # factor U(1 - r, 1 + r)
    gamma_prob: float
    gamma_range: Tuple[float, float]
    blur_prob: float
    blur_sigma: Tuple[float, float]    # in voxels
    noise_prob: float
    noise_std_max: float               # std U(0, max)


def _per_sample(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def _drawn(batch: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, generator=generator, device=generator.device) < prob


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator, device=generator.device)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """mean + factor · (x - mean) per sample (torchvision's ColorJitter contrast: a blend with the mean)."""
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return mean + _per_sample(x, factor) * (x - mean)


def adjust_gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Each sample rescaled to [0, 1] by its range, raised to gamma, and mapped back (MONAI's AdjustContrast,
    nnU-Net's gamma transform): the extremes stay, the mid-tones move."""
    dims = tuple(range(1, x.ndim))
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    scale = (high - low).clamp_min(1e-8)
    return ((x - low) / scale).clamp(0, 1).pow(_per_sample(x, gamma)) * scale + low


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing with a standard deviation per sample (sigma 0: identity), truncated at
    3 · max_sigma voxels, edges replicated; one grouped convolution per axis for the whole batch."""
    batch, channels, *spatial = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    sigma = sigma.to(x.dtype).clamp_min(1e-6)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None] / sigma) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)                       # (B, K); sigma → 0: a delta
    kernels = kernels.repeat_interleave(channels, dim=0)                       # one per (sample, channel)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(spatial) - 1]
    y = x.reshape(1, batch * channels, *spatial)
    for axis in range(len(spatial)):
        shape = [batch * channels, 1] + [1] * len(spatial)
        shape[2 + axis] = kernels.shape[1]
        pad = [0, 0] * len(spatial)
        pad[2 * (len(spatial) - 1 - axis)] = pad[2 * (len(spatial) - 1 - axis) + 1] = radius
        y = conv(F.pad(y, pad, mode="replicate"), kernels.reshape(shape), groups=batch * channels)
    return y.reshape(x.shape)


def strong_intensity(x: torch.Tensor, p: StrongIntensity, generator: torch.Generator) -> torch.Tensor:
    """The strong view of a batch: contrast, gamma, blur, noise (see the module docstring)."""
    batch = x.shape[0]
    one = torch.ones(batch, device=x.device)
    factor = torch.where(_drawn(batch, p.contrast_prob, generator),
                         _uniform(batch, 1 - p.contrast_range, 1 + p.contrast_range, generator), one)
    x = torch.where(_per_sample(x, factor) == 1, x, adjust_contrast(x, factor))
    gamma = torch.where(_drawn(batch, p.gamma_prob, generator), _uniform(batch, *p.gamma_range, generator), one)
    x = torch.where(_per_sample(x, gamma) == 1, x, adjust_gamma(x, gamma))
    sigma = torch.where(_drawn(batch, p.blur_prob, generator), _uniform(batch, *p.blur_sigma, generator), 0 * one)
    if p.blur_prob > 0:
        x = torch.where(_per_sample(x, sigma) == 0, x, gaussian_blur(x, sigma, p.blur_sigma[1]))
    std = torch.where(_drawn(batch, p.noise_prob, generator), _uniform(batch, 0, p.noise_std_max, generator), 0 * one)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return x + _per_sample(x, std) * noise


def feature_dropout_scale(batch: int, channels: int, spatial_dims: int, p: float, perturbed: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    """Channel dropout as a multiplicative scale (B, C, 1, ..., 1) for a feature map (nn.Dropout2d/3d, as
    UniMatch's code perturbs features: whole maps zeroed with probability p, the rest scaled by 1 / (1 - p)) on
    the samples where ``perturbed`` (B,) is True, and 1 on the others, so that one batched pass can hold perturbed
    and clean samples."""
    shape = (batch, channels) + (1,) * spatial_dims
    kept = torch.rand(shape, generator=generator, device=generator.device) >= p
    scale = kept.float() / (1.0 - p)
    return torch.where(perturbed.reshape(-1, *([1] * (spatial_dims + 1))), scale, torch.ones_like(scale))
