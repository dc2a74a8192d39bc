"""Batches for contrastive pretraining (Chaitanya et al. 2020): crops with a known partition index.

The main axis of a volume (``data.slice_axis``) is cut into ``partitions`` equal parts. A batch draws
``volumes`` distinct training volumes and, from each, one crop per partition: in 2D a slice whose index lies
in that partition, then an in-plane patch; in 3D a patch whose centre along the main axis lies in that
partition (as far as the patch fits in the volume). Item i of ``PartitionCropBatches`` is a whole batch drawn
with a generator seeded by (seed, i), so a run is reproducible and a resumed run continues the same stream.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from monai import transforms as T
from torch.utils.data import Dataset

from ssl_bench.data.datamodule import _base_transforms

# Spreads the per-batch seeds of different runs apart.
_SEED_STRIDE = 1_000_003


def load_volumes(image_paths: Sequence[str]) -> List[torch.Tensor]:
    """(1, *shape) z-scored images, as every training stream normalises them (no labels)."""
    xform = T.Compose(_base_transforms(("image",)))
    return [torch.as_tensor(xform({"image": str(p)})["image"]) for p in image_paths]


def partition_range(length: int, partition: int, partitions: int) -> range:
    """Indices along an axis of ``length`` whose relative position falls in ``partition`` (never empty)."""
    lo = partition * length // partitions
    hi = max(lo + 1, (partition + 1) * length // partitions)
    return range(lo, min(hi, length))


def _pad_to(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    pad = []
    for dim in reversed(range(len(size))):
        missing = max(0, size[dim] - volume.shape[1 + dim])
        pad += [missing // 2, missing - missing // 2]
    return F.pad(volume, pad) if any(pad) else volume


def partition_crop(volume: torch.Tensor, partition: int, partitions: int, axis: int, patch: Sequence[int],
                   generator: torch.Generator) -> torch.Tensor:
    """One crop (1, *patch) of a (1, X, Y, Z) volume from ``partition`` of ``axis``; a 2D patch drops ``axis``."""
    two_d = len(patch) == 2
    crop_size = list(patch)
    if two_d:
        crop_size.insert(axis, 1)
    volume = _pad_to(volume, [s if d != axis else 1 for d, s in enumerate(crop_size)])
    shape = volume.shape[1:]
    starts = []
    for dim, (length, size) in enumerate(zip(shape, crop_size)):
        if dim == axis:
            positions = partition_range(length, partition, partitions)
            centre = positions[int(torch.randint(len(positions), (), generator=generator))]
            starts.append(min(max(0, centre - size // 2), length - size))
        else:
            starts.append(int(torch.randint(length - size + 1, (), generator=generator)))
    crop = volume[(slice(None),) + tuple(slice(s, s + n) for s, n in zip(starts, crop_size))]
    return crop.squeeze(1 + axis) if two_d else crop


class PartitionCropBatches(Dataset):
    """``steps`` batches {"image": (V·P, 1, *patch), "volume_id": (V·P,), "partition": (V·P,)}."""

    def __init__(self, volumes: List[torch.Tensor], volumes_per_batch: int, partitions: int, axis: int,
                 patch: Sequence[int], steps: int, seed: int):
        if len(volumes) < 2:
            raise ValueError(f"contrastive pretraining needs at least 2 training volumes, got {len(volumes)}")
        self.volumes, self.partitions, self.axis, self.patch = volumes, partitions, axis, list(patch)
        self.volumes_per_batch = min(volumes_per_batch, len(volumes))
        self.steps, self.seed = steps, seed

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + index)
        chosen = torch.randperm(len(self.volumes), generator=g)[:self.volumes_per_batch].tolist()
        crops, volume_ids, partition_ids = [], [], []
        for v in chosen:
            for p in range(self.partitions):
                crops.append(partition_crop(self.volumes[v], p, self.partitions, self.axis, self.patch, g))
                volume_ids.append(v)
                partition_ids.append(p)
        return {"image": torch.stack(crops), "volume_id": torch.tensor(volume_ids),
                "partition": torch.tensor(partition_ids)}
