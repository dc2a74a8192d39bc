"""Views of a volume by permuting its spatial axes (multi-view co-training, Xia et al. 2020).

A view is a permutation of the spatial axes of (B, C, *spatial) tensors; ``to_view`` and ``from_view`` are pure
index permutations, so they undo each other exactly and commute with per-voxel operations (softmax).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

# Dimensions before the spatial ones in (B, C, *spatial).
_LEADING_DIMS = 2

Permutation = Tuple[int, ...]


def view_permutations(spatial_dims: int, views: int) -> List[Permutation]:
    """The first ``views`` cyclic shifts of the spatial axes: view k puts axis k first. In 3D the three shifts
    give each orientation (axial, coronal, sagittal) the leading place, as UMCT's views; in 2D the second is the
    transpose. View 0 is the identity: the common orientation in which predictions are compared."""
    if not 1 <= views <= spatial_dims:
        raise ValueError(f"{spatial_dims}D data has {spatial_dims} cyclic views, asked for {views}")
    return [tuple((k + i) % spatial_dims for i in range(spatial_dims)) for k in range(views)]


def inverse_permutation(permutation: Sequence[int]) -> Permutation:
    inverse = [0] * len(permutation)
    for position, axis in enumerate(permutation):
        inverse[axis] = position
    return tuple(inverse)


def to_view(x: torch.Tensor, permutation: Sequence[int]) -> torch.Tensor:
    """(B, C, *spatial) in the common orientation to the view: spatial axis i of the result is ``permutation[i]``."""
    return x.permute(*range(_LEADING_DIMS), *(_LEADING_DIMS + a for a in permutation))


def from_view(x: torch.Tensor, permutation: Sequence[int]) -> torch.Tensor:
    """The inverse of ``to_view``: a tensor in the view back to the common orientation."""
    return to_view(x, inverse_permutation(permutation))


def permuted_shape(shape: Sequence[int], permutation: Sequence[int]) -> List[int]:
    """The spatial shape a view network sees for ``shape`` in the common orientation (non-cubic patches differ)."""
    return [shape[a] for a in permutation]
