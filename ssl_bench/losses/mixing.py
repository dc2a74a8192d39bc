"""Box masks and image mixing of CutMix (UniMatch's strong views) and Bidirectional Copy-Paste (BCP), as pure,
batched tensor functions on the device of their inputs.

Every random draw comes from the ``generator`` passed in (a training step's ``stream_generator``), so a resumed run
draws the same boxes. Masks are (B, 1, *spatial) bool, broadcastable over channels.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch


def box_mask(spatial_shape: Sequence[int], starts: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(B, 1, *spatial) bool, True inside box b: starts[b, k] <= index along axis k < starts[b, k] + sizes[b, k]."""
    batch, dims = starts.shape
    inside = torch.ones((batch, 1) + (1,) * dims, dtype=torch.bool, device=starts.device)
    for axis, side in enumerate(spatial_shape):
        index = torch.arange(side, device=starts.device)
        start, size = starts[:, axis:axis + 1], sizes[:, axis:axis + 1]
        along = (index >= start) & (index < start + size)  # (B, side)
        shape = [batch, 1] + [1] * dims
        shape[2 + axis] = side
        inside = inside & along.reshape(shape)
    return inside


def _uniform(generator: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def random_starts(spatial_shape: Sequence[int], sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Box corners uniform over the positions where a box of ``sizes`` (B, d) fits in the patch."""
    room = torch.tensor(list(spatial_shape), device=sizes.device) - sizes + 1
    return (torch.rand(sizes.shape, generator=generator, device=generator.device) * room).floor().long()


def cutmix_boxes(batch: int, spatial_shape: Sequence[int], generator: torch.Generator, prob: float,
                 area: Tuple[float, float], aspect: Tuple[float, float]) -> torch.Tensor:
    """CutMix boxes as UniMatch's medical code draws them (Yang et al. 2023, ``obtain_cutmix_box``): with
    probability ``prob`` a box of a fraction U(area) of the patch, its sides along axes 1..d-1 U(aspect) times its
    side along axis 0 (in 2D exactly the code's w = sqrt(s / r), h = sqrt(s·r)); else no box. A side longer than
    the patch is cut to the patch (the code redraws the ratio instead), then the box is placed uniformly."""
    dims = len(spatial_shape)
    applied = torch.rand(batch, generator=generator, device=generator.device) < prob
    volume = _uniform(generator, batch, *area) * math.prod(spatial_shape)
    ratios = _uniform(generator, (batch, dims - 1), *aspect)
    first = (volume / ratios.prod(dim=1)) ** (1.0 / dims)
    sides = torch.cat([first[:, None], first[:, None] * ratios], dim=1).floor().long()
    sides = torch.minimum(sides, torch.tensor(list(spatial_shape), device=sides.device))
    starts = random_starts(spatial_shape, sides, generator)
    return box_mask(spatial_shape, starts, sides) & applied.reshape(-1, *([1] * (dims + 1)))


def bcp_outside_mask(batch: int, spatial_shape: Sequence[int], generator: torch.Generator,
                     box_fraction: float) -> torch.Tensor:
    """BCP's zero-centred mask M (Bai et al. 2023): 1 (True) everywhere but a box of int(box_fraction · side) along
    every axis, placed uniformly in the patch, where it is 0. One box per sample."""
    sides = torch.tensor([[int(side * box_fraction) for side in spatial_shape]] * batch, device=generator.device)
    return ~box_mask(spatial_shape, random_starts(spatial_shape, sides, generator), sides)


def paste(outside: torch.Tensor, inside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``outside`` where ``mask`` is True, ``inside`` where it is False: a ⊙ M + b ⊙ (1 - M) for images and labels."""
    return torch.where(mask, outside, inside)


def cutmix(images: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image with its box cut from the image at index partner[b] of the same batch."""
    return paste(images[partner], images, boxes)


def cutmix_partners(batch: int, generator: torch.Generator) -> torch.Tensor:
    """For each image another image of the batch to take a CutMix box from (itself only in a batch of one)."""
    if batch == 1:
        return torch.zeros(1, dtype=torch.long, device=generator.device)
    shift = torch.randint(1, batch, (batch,), generator=generator, device=generator.device)
    return (torch.arange(batch, device=generator.device) + shift) % batch


def bidirectional_copy_paste(labeled: torch.Tensor, labels: torch.Tensor, unlabeled: torch.Tensor,
                             pseudo_labels: torch.Tensor, outside: torch.Tensor
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BCP's mixed inputs and targets (Bai et al. 2023) from 2P labeled and 2P unlabeled images and 2P masks M:
    the first P pairs give X_in = X_l ⊙ M + X_u ⊙ (1 - M) (the labeled image around an unlabeled box), the last P
    give X_out = X_u ⊙ M + X_l ⊙ (1 - M) (the unlabeled image around a labeled box), so that every image is used
    once, as in the paper (two labeled and two unlabeled images per pair of mixed images). Targets Y_in, Y_out mix
    ground truth and pseudo-labels alike. Returns images, targets and the mask of the voxels from a labeled image."""
    pairs = labeled.shape[0] // 2
    into = slice(0, pairs)
    out = slice(pairs, 2 * pairs)
    images = torch.cat([paste(labeled[into], unlabeled[into], outside[into]),
                        paste(unlabeled[out], labeled[out], outside[out])])
    targets = torch.cat([paste(labels[into], pseudo_labels[into], outside[into]),
                         paste(pseudo_labels[out], labels[out], outside[out])])
    from_labeled = torch.cat([outside[into], ~outside[out]])
    return images, targets, from_labeled
