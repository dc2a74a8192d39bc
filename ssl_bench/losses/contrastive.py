"""Global and local contrastive losses of Chaitanya et al. (NeurIPS 2020), as pure functions.

- ``nt_xent``: NT-Xent (Chen et al. 2020) generalised to several positives per anchor, as Chaitanya et al.'s
  global loss: for anchor i with positives P(i),
  ℓ_i = 1/|P(i)| Σ_{j∈P(i)} -log( exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ) ), s = cosine similarity,
  averaged over the anchors that have a positive.
- ``partition_positive_mask``: the "GD-" positives: the other augmentation of the same crop, and crops from
  the same partition (relative position along the volume's main axis) of *different* volumes.
- ``local_contrastive_loss``: NT-Xent over the regions of a decoder feature map, per image: the positive of a
  region is the same region in the other augmentation, negatives are the image's other regions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z: torch.Tensor, positive_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z`` (..., M, D) embeddings (normalised here), ``positive_mask`` (..., M, M) bool, True where j is a
    positive of anchor i (the diagonal is ignored). Leading dimensions are independent groups (e.g. images),
    each with its own denominator; the result is the mean over all anchors that have at least one positive."""
    z = F.normalize(z, dim=-1)
    logits = z @ z.transpose(-1, -2) / temperature
    eye = torch.eye(z.shape[-2], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))  # k ≠ i in the denominator
    log_prob = logits - logits.logsumexp(dim=-1, keepdim=True)
    positives = (positive_mask & ~eye).expand(logits.shape)
    n_positives = positives.sum(dim=-1)
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=-1) / n_positives.clamp_min(1)
    has_positive = n_positives > 0
    if not has_positive.any():
        raise ValueError("nt_xent: no anchor has a positive (a batch needs two views or two volumes)")
    return per_anchor[has_positive].mean()


def partition_positive_mask(volume_ids: torch.Tensor, partitions: torch.Tensor,
                            augmentation_ids: torch.Tensor) -> torch.Tensor:
    """(M, M) positives of Chaitanya et al.'s GD- strategy for M crops, given per crop its volume, its partition
    index along the volume's main axis, and which augmentation it is. A crop is identified by (volume,
    partition): i and j are positives if they are the two augmentations of one crop, or if they come from the
    same partition of different volumes. Never an anchor with itself."""
    same_volume = volume_ids[:, None] == volume_ids[None, :]
    same_partition = partitions[:, None] == partitions[None, :]
    other_augmentation = augmentation_ids[:, None] != augmentation_ids[None, :]
    same_crop_other_view = same_volume & same_partition & other_augmentation
    same_partition_other_volume = same_partition & ~same_volume
    return same_crop_other_view | same_partition_other_volume


def region_embeddings(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, *spatial) feature map to (N, grid**dims, C): the mean feature of each cell of a grid × ... × grid
    partition of the map (the "local regions" of Chaitanya et al.)."""
    dims = features.dim() - 2
    pool = F.adaptive_avg_pool3d if dims == 3 else F.adaptive_avg_pool2d
    return pool(features, grid).flatten(2).transpose(1, 2)


def local_positive_mask(n_regions: int, device=None) -> torch.Tensor:
    """(2R, 2R) positives among the regions of two aligned augmentations [view a regions; view b regions] of one
    image: region r of one view and region r of the other."""
    region = torch.arange(n_regions, device=device).repeat(2)
    view = torch.arange(2, device=device).repeat_interleave(n_regions)
    return (region[:, None] == region[None, :]) & (view[:, None] != view[None, :])


def local_contrastive_loss(regions_a: torch.Tensor, regions_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Chaitanya et al.'s local loss from (N, R, D) region embeddings of two augmentations of N images, aligned
    region by region (the spatial transforms undone): NT-Xent within each image over its 2R regions."""
    z = torch.cat([regions_a, regions_b], dim=1)
    return nt_xent(z, local_positive_mask(regions_a.shape[1], z.device), temperature)
