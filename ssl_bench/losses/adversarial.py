"""The adversarial method's losses (Hung et al. 2018), as pure functions of discriminator logits, and the losses of
one step as the method returns them (AdversarialLosses).

D's output is a per-voxel logit of "this probability map is ground truth"; every function takes logits, so
BCE is computed stably with ``binary_cross_entropy_with_logits``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class AdversarialLosses(NamedTuple):
    """Both losses of one adversarial step and what it logs of them (the method's ``losses(batch)``)."""
    segmenter: torch.Tensor       # what the segmenter's optimizer minimises
    discriminator: torch.Tensor   # what D's optimizer minimises
    supervised: torch.Tensor
    adversarial: torch.Tensor     # λ-weighted sum of both fool terms
    self_training: torch.Tensor   # unweighted masked CE (0 before the start)
    confident_fraction: torch.Tensor
    accuracy_real: torch.Tensor
    accuracy_fake: torch.Tensor


def fool_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The segmenter's adversarial term BCE(D(p), 1): its predictions should look like ground truth to D."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """D's loss: BCE(D(p), 0) on predictions plus BCE(D(y), 1) on one-hot ground truth, halved as in Hung
    et al.'s code, so that each half weighs what a single BCE weighs."""
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    return 0.5 * (fake + real)


def confidence_mask(fake_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Voxels where D believes the prediction, D(p) > τ_semi (Hung et al.'s confidence map), as a bool mask.

    A strict inequality, so τ_semi = 1 keeps no voxel at all. No gradient flows through a mask.
    """
    return torch.sigmoid(fake_logits.detach()) > threshold


def masked_self_training_loss(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """CE(p(u), argmax p(u)) over the kept voxels, divided by their number; 0 if none is kept.

    ``logits`` (B, C, *spatial), ``keep`` (B, 1, *spatial). The target is the network's own hard decision, so it
    carries no gradient; the loss sharpens the prediction where D trusts it.
    """
    target = logits.detach().argmax(dim=1)
    per_voxel = F.cross_entropy(logits, target, reduction="none")
    kept = keep.squeeze(1)
    return (per_voxel * kept).sum() / kept.sum().clamp_min(1)


def discriminator_accuracy(logits: torch.Tensor, is_real: bool) -> torch.Tensor:
    """Fraction of voxels D classifies correctly (logit > 0 means "ground truth")."""
    return ((logits > 0) == is_real).float().mean()
