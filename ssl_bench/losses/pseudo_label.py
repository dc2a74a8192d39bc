"""Losses against hard pseudo-labels (CPS, UniMatch / FixMatch, BCP), as pure functions.

Shapes: ``logits`` (B, C, *spatial); label maps (B, 1, *spatial) integers in 0..C-1, as the data module sends
labels; masks (B, 1, *spatial) bool. A pseudo-label is a decision (argmax), so no gradient flows through it.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from scipy import ndimage

# The Dice half of a masked DiceCE: MONAI's soft Dice with the settings of the protocol's supervised DiceCELoss
# (softmax, background included, per sample and class), restricted to the mask's voxels. It gets one-hot targets:
# MaskedDiceLoss masks the target before its own one-hot conversion, which would turn every masked voxel into
# background and count it in the background's Dice.
_MASKED_DICE = MaskedDiceLoss(softmax=True)


def hard_pseudo_labels(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """argmax and max of softmax(logits), each (B, 1, *spatial), without gradient: the label and its confidence."""
    confidence, labels = logits.detach().softmax(dim=1).max(dim=1, keepdim=True)
    return labels, confidence


def cross_entropy_to(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of CE(softmax(logits), labels), labels (B, 1, *spatial)."""
    return F.cross_entropy(logits, labels[:, 0].long())


def cross_pseudo_supervision(logits_1: torch.Tensor, logits_2: torch.Tensor) -> torch.Tensor:
    """CE(p1, Y2) + CE(p2, Y1) with Y = argmax p, no gradient through Y (Chen et al. 2021): each network is
    supervised by the other's hard decision."""
    labels_1, _ = hard_pseudo_labels(logits_1)
    labels_2, _ = hard_pseudo_labels(logits_2)
    return cross_entropy_to(logits_1, labels_2) + cross_entropy_to(logits_2, labels_1)


def masked_dice_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, normalise_by_mask: bool,
                   with_ce: bool = True) -> torch.Tensor:
    """CE + soft Dice of softmax(logits) against the label map ``target`` on the voxels of ``mask`` only (the Dice
    alone without ``with_ce``).

    The CE sums over the kept voxels and divides by their number (``normalise_by_mask``, a loss on one source of
    a mixed image, as BCP) or by all voxels (a confidence-masked consistency, as FixMatch and UniMatch: a batch
    whose pseudo-labels are mostly unsure weighs less). The Dice is MONAI's MaskedDiceLoss: voxels outside the
    mask count in neither the overlap nor the sizes; a sample and class with no kept voxel adds 0.
    """
    keep = mask.to(logits.dtype)
    one_hot = F.one_hot(target[:, 0].long(), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    dice = _MASKED_DICE(logits, one_hot, keep)
    if not with_ce:
        return dice
    per_voxel = F.cross_entropy(logits, target[:, 0].long(), reduction="none").unsqueeze(1)
    count = keep.sum().clamp_min(1) if normalise_by_mask else keep.numel()
    return (per_voxel * keep).sum() / count + dice


def confident_dice_ce(logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor, threshold: float,
                      with_ce: bool = True) -> torch.Tensor:
    """UniMatch's / FixMatch's loss against a pseudo-label: masked CE + Dice (or Dice alone) on the voxels whose
    pseudo-label confidence is at least ``threshold`` (Sohn et al. 2020; Yang et al. 2023: max p ≥ τ)."""
    return masked_dice_ce(logits, target, confidence >= threshold, normalise_by_mask=False, with_ce=with_ce)


def source_dice_ce(logits: torch.Tensor, target: torch.Tensor,
                   from_labeled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """BCP's loss on a mixed image (Bai et al. 2023), in its two parts: masked DiceCE on the voxels that come
    from the labeled image and on those that come from the unlabeled one; BCP weighs the second by α."""
    return (masked_dice_ce(logits, target, from_labeled, normalise_by_mask=True),
            masked_dice_ce(logits, target, ~from_labeled, normalise_by_mask=True))


def largest_component_per_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each foreground class of each label map (B, 1, *spatial) reduced to its largest connected component (full
    connectivity, as skimage.measure.label in Bai et al.'s code); the other components become background (0).

    On a GPU by label propagation on the device (``_largest_components_on_device``): the maps never leave it, and
    a convergence check every few propagation steps is the only wait; on the CPU by scipy.ndimage.label (skimage, MONAI's KeepLargestConnectedComponent
    backend, is not a dependency here). Both give the same maps (tested), but for which of two equally large
    components is kept."""
    if labels.is_cuda:
        return _largest_components_on_device(labels, num_classes)
    maps = labels.detach().cpu().numpy()
    out = np.zeros_like(maps)
    structure = ndimage.generate_binary_structure(maps.ndim - 2, maps.ndim - 2)
    for b in range(maps.shape[0]):
        for cls in range(1, num_classes):
            components, count = ndimage.label(maps[b, 0] == cls, structure=structure)
            if count == 0:
                continue
            sizes = np.bincount(components.reshape(-1))
            sizes[0] = 0
            out[b, 0][components == sizes.argmax()] = cls
    return torch.from_numpy(out).to(labels.device)


# Propagation steps between two convergence checks (each check waits for the device once).
_PROPAGATION_CHUNK = 8


def _largest_components_on_device(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """largest_component_per_class by max-propagation: every voxel of class c in map b starts with its own index
    (unique over the batch and classes); a max-pool over the full 3^d neighbourhood, restricted to the class, spreads
    the largest index through each connected component until nothing changes; the component with most voxels in
    each (map, class) is kept."""
    batch, spatial = labels.shape[0], labels.shape[2:]
    classes = torch.arange(1, num_classes, device=labels.device).reshape(1, -1, *([1] * len(spatial)))
    member = (labels == classes).reshape(-1, 1, *spatial)  # (B·(C-1), 1, *spatial): one map per (sample, class)
    voxels = math.prod(spatial)
    count = member.shape[0] * voxels
    dtype = torch.float32 if count < 2 ** 24 else torch.float64  # indices exact in the float max-pool
    index = torch.arange(1, count + 1, device=labels.device, dtype=dtype).reshape(member.shape)
    component = torch.where(member, index, torch.zeros((), dtype=dtype, device=labels.device))
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(spatial) - 1]
    while True:
        previous = component
        for _ in range(_PROPAGATION_CHUNK):
            component = torch.where(member, pool(component, 3, stride=1, padding=1), component)
        if torch.equal(component, previous):
            break
    ids = component.long().reshape(-1)
    sizes = torch.bincount(ids, minlength=count + 1)[1:].reshape(-1, voxels)  # per map, size of each component id
    largest = sizes.argmax(dim=1) + 1 + torch.arange(sizes.shape[0], device=labels.device) * voxels
    keep = (component.long().reshape(sizes.shape[0], -1) == largest[:, None]) & (sizes.amax(dim=1) > 0)[:, None]
    keep = keep.reshape(batch, num_classes - 1, *spatial)
    kept_class = (keep * classes).sum(dim=1, keepdim=True)
    return kept_class.to(labels.dtype)
