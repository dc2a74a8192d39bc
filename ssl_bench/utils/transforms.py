"""Exactly invertible spatial transforms (flips and 90° rotations) of (B, C, *spatial) tensors.

They are pure index permutations (torch.flip, torch.rot90), so a transform and its inverse undo each
other bit for bit, and they commute with any per-voxel operation such as a softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence, Tuple

import torch

# Dimensions before the spatial ones in (B, C, *spatial).
_LEADING_DIMS = 2


@dataclass(frozen=True)
class FlipRotation:
    """Flip ``flip_dims``, then rotate by ``quarter_turns`` × 90° in ``plane`` (tensor dimensions)."""
    flip_dims: Tuple[int, ...]
    plane: Tuple[int, int]
    quarter_turns: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(torch.flip(x, self.flip_dims), self.quarter_turns, self.plane)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(torch.rot90(x, -self.quarter_turns, self.plane), self.flip_dims)


def random_flip_rotation(spatial_shape: Sequence[int], flip_prob: float) -> FlipRotation:
    """Each spatial axis flipped with probability ``flip_prob``, then a rotation in a uniformly drawn plane of
    the spatial axes (2D: the only one) by a uniform number of quarter turns among those that keep the shape:
    0-3 where the plane's two sides are equal, else 0 or 2 (a 90° turn would swap unequal sides).

    Draws from torch's global generator, so seeding the run makes it reproducible.
    """
    axes = range(_LEADING_DIMS, _LEADING_DIMS + len(spatial_shape))
    flip_dims = tuple(d for d in axes if torch.rand(()).item() < flip_prob)
    planes = list(combinations(axes, 2))
    plane = planes[int(torch.randint(len(planes), ()))]
    square = spatial_shape[plane[0] - _LEADING_DIMS] == spatial_shape[plane[1] - _LEADING_DIMS]
    turns = (0, 1, 2, 3) if square else (0, 2)
    return FlipRotation(flip_dims, plane, turns[int(torch.randint(len(turns), ()))])


def apply_each(transforms: Sequence[FlipRotation], x: torch.Tensor) -> torch.Tensor:
    """transforms[i] applied to sample i of the batch ``x``."""
    return torch.cat([t.apply(sample) for t, sample in zip(transforms, x.split(1), strict=True)])
