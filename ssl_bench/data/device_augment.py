"""Training batches made on the training device: the volumes held once in memory, each batch cropped, flipped and
intensity-shifted as batched tensor operations where the network runs, instead of one MONAI transform chain per
patch in the loader.

It computes exactly what the MONAI chain of ``ssl_bench/data/datamodule.py`` computes (tests/test_device_augment.py
checks the batches bit for bit): the loader draws each item's augmentation parameters with MONAI's own
``randomize`` methods, on the same transform objects and the same position-seeded random states
(``PositionSeeded``), but touches no voxel; ``DeviceBatches.materialize`` then applies them to the whole batch on
the device. The stream semantics are unchanged: which case and which parameters come at a position depend on the
position alone.

What the chain does, in order (``_train_transforms``): 2D only, a random slice along ``data.slice_axis``, dropped;
symmetric zero padding up to the patch (deterministic: done once per volume here, before the slice, on the other
axes); a random crop of the patch; a random flip per spatial axis; a random intensity scale ``x·(1 + f)`` then shift
``x + o`` of the image. Padding before the intensity change, as in the chain, so padded voxels get the offset too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from monai import transforms as T
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from ssl_bench.data.stream import PositionSeeded

# Per-case entries of a record that travel with a training item unchanged (not volumes).
PASSENGER_KEYS = ("case_index", "spacing", "annotated")
# What a training step reads as Python numbers (the crop's case, start, slice and flips; the stream position that
# seeds a step's own randomness; the case index SMILEr looks its pseudo-labels up by): they stay on the host when a
# batch moves to the training device.
HOST_KEYS = ("position", "index", "start", "slice", "flip", "case_index")


def _crop_start(crop: T.RandSpatialCropd, shape: Sequence[int]) -> List[int]:
    """The first corner of the crop that ``crop`` draws for a volume of ``shape``, as its __call__ draws it."""
    crop.randomize(list(shape))
    return [s.start for s in crop.cropper._slices]


@dataclass
class Plan:
    """Where the random transforms of the MONAI chain sit: what the device applies for each."""
    slice_crop: T.RandSpatialCropd = None  # 2D: the random slice
    crop: T.RandSpatialCropd = None
    flips: tuple = ()  # one RandFlipd per spatial axis, in axis order
    scale: T.RandScaleIntensityd = None
    shift: T.RandShiftIntensityd = None


def plan_of(transforms: Sequence, spatial_dims: int) -> Plan:
    """The random transforms of a ``_train_transforms`` chain; any other random transform is an error, so that a
    change of the chain cannot silently diverge from what the device computes."""
    plan, flips = Plan(), []
    for t in transforms:
        if isinstance(t, T.RandSpatialCropd):
            if spatial_dims == 2 and plan.slice_crop is None:
                plan.slice_crop = t  # 2D: the chain's first crop takes the slice
            else:
                plan.crop = t
        elif isinstance(t, T.RandFlipd):
            flips.append(t)
        elif isinstance(t, T.RandScaleIntensityd):
            plan.scale = t
        elif isinstance(t, T.RandShiftIntensityd):
            plan.shift = t
        elif isinstance(t, T.Randomizable):
            raise TypeError(f"device augmentation cannot apply {type(t).__name__}")
    plan.flips = tuple(flips)
    return plan


class AugmentationParameters(Dataset):
    """``dataset[(position, index)]``: item ``index``'s augmentation parameters at stream ``position``, drawn by
    the chain's own MONAI transforms from the random states ``PositionSeeded`` gives them, plus its passengers
    (case index, spacing, annotation flags), as Python values and numpy arrays; ``collate_parameters`` makes a batch
    of them.
    ``shapes[index]`` is the item's volume shape after padding."""

    def __init__(self, chain: T.Compose, records: List[dict], shapes: List[Sequence[int]], seed: int,
                 spatial_dims: int, slice_axis: int):
        self._seeded = PositionSeeded(_NoData(chain), seed)
        self.plan = plan_of(chain.transforms, spatial_dims)
        self.records, self.shapes = records, [list(s) for s in shapes]
        # Tensors as numpy arrays: an item is plain data, which a loader worker hands over without a shared-memory
        # file per tensor (with them, a batch of 4 arrived 4 ms after it was asked for); the default collation makes
        # the same tensors of them.
        self._passengers = [{k: r[k].numpy() if isinstance(r[k], torch.Tensor) else r[k]
                             for k in PASSENGER_KEYS if k in r} for r in records]
        self.spatial_dims, self.slice_axis = spatial_dims, slice_axis

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: Sequence[int]) -> dict:
        position, index = key
        self._seeded.seed_transforms(position)
        p, shape = self.plan, list(self.shapes[index])
        item = {"index": index, "position": position}
        item.update(self._passengers[index])
        if p.slice_crop is not None:
            item["slice"] = _crop_start(p.slice_crop, shape)[self.slice_axis]
            del shape[self.slice_axis]
        item["start"] = _crop_start(p.crop, shape)
        flips = []
        for flip in p.flips:
            flip.randomize(None)
            flips.append(bool(flip._do_transform))
        item["flip"] = flips + [False] * (self.spatial_dims - len(flips))
        item["intensity"] = (_scale_factor(p.scale), _shift_offset(p.shift))
        return item


def collate_parameters(items: List[dict]) -> dict:
    """A batch of ``AugmentationParameters`` items as plain Python lists, one per key (passengers included): what a
    loader worker hands to the training process pickled in microseconds, where each tensor in it would cost a
    shared-memory file on both sides. ``parameters_to_tensors`` makes the tensors, in the training process."""
    return {key: [item[key] for item in items] for key in items[0]}


def parameters_to_tensors(params: dict) -> dict:
    """A ``collate_parameters`` batch as tensors, in the training process: ``index``, ``position``, ``slice`` (B,),
    ``start`` and ``flip`` (B, spatial dims), ``intensity`` (B, 2: the scale 1 + f and the offset o, float32, one
    transfer to the device), and the passengers as torch's default collation makes them. Built from Python values
    in one go: a tensor per item and value, collated by the generic default, cost more than the parameters' draw."""
    batch = {"index": torch.tensor(params["index"]), "position": torch.tensor(params["position"]),
             "start": torch.tensor(params["start"]), "flip": torch.tensor(params["flip"], dtype=torch.bool),
             "intensity": torch.tensor(params["intensity"], dtype=torch.float32)}
    if "slice" in params:
        batch["slice"] = torch.tensor(params["slice"])
    batch.update({key: default_collate(params[key]) for key in PASSENGER_KEYS if key in params})
    return batch


def _scale_factor(t) -> float:
    """1 + f as RandScaleIntensityd draws it (1 where it does not scale)."""
    if t is None:
        return 1.0
    t.randomize(None)
    if not t._do_transform:
        return 1.0
    t.scaler.randomize(None)
    return 1.0 + t.scaler.factor if t.scaler._do_transform else 1.0


def _shift_offset(t) -> float:
    if t is None:
        return 0.0
    t.randomize(None)
    if not t._do_transform:
        return 0.0
    t.shifter.randomize(None)
    return t.shifter._offset if t.shifter._do_transform else 0.0


class _NoData:
    """What PositionSeeded needs of a dataset to seed a chain's random transforms, without data."""

    def __init__(self, chain: T.Compose):
        self.transform = chain

    def __len__(self) -> int:
        return 0


class DeviceBatches:
    """The volumes of one training stream (``keys``: image, label, ...), padded once as the chain pads them, and
    the batched crop / flip / intensity that turns a batch of ``AugmentationParameters`` into the batch the chain
    would have made. The volumes move to the device of the first batch and stay there."""

    def __init__(self, volumes: Dict[str, List[torch.Tensor]], patch_size: Sequence[int], spatial_dims: int,
                 slice_axis: int):
        self.patch = list(patch_size)
        self.spatial_dims, self.slice_axis = spatial_dims, slice_axis
        pad_size = list(patch_size)
        if spatial_dims == 2:
            pad_size.insert(slice_axis, -1)  # the slice axis is not padded (-1: keep its size)
        pad = T.SpatialPad(spatial_size=pad_size)
        self.volumes = {k: [pad(torch.as_tensor(v)).as_subclass(torch.Tensor) for v in vs] for k, vs in volumes.items()}
        self.shapes = [list(v.shape[1:]) for v in next(iter(self.volumes.values()))]
        self._device = torch.device("cpu")

    def to(self, device: torch.device) -> "DeviceBatches":
        if device != self._device:
            self.volumes = {k: [v.to(device) for v in vs] for k, vs in self.volumes.items()}
            self._device = device
        return self

    def materialize(self, params: dict) -> dict:
        """The training batch part (``{"image": (B, 1, *patch), "label": ..., "position": ..., passengers}``) from a
        batch of parameters (``parameters_to_tensors``), on the device of its ``intensity`` (its HOST_KEYS stay on
        the host)."""
        intensity = params["intensity"]
        self.to(intensity.device)
        indices, starts, flips = params["index"].tolist(), params["start"].tolist(), params["flip"].tolist()
        slices = params["slice"].tolist() if "slice" in params else None
        out = {k: params[k] for k in ("position", *PASSENGER_KEYS) if k in params}
        for key, volumes in self.volumes.items():
            patches = []
            for b, (index, start, flip) in enumerate(zip(indices, starts, flips)):
                volume = volumes[index]
                if slices is not None:
                    volume = volume.select(self.slice_axis + 1, slices[b])
                window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, self.patch))
                patch = volume[window]
                flipped = [axis + 1 for axis, f in enumerate(flip) if f]  # (C, *spatial): axis a is dim a + 1
                patches.append(patch.flip(flipped) if flipped else patch)
            batch = torch.stack(patches)
            if key == "image":
                shape = (-1,) + (1,) * (batch.dim() - 1)
                # Two operations, as the chain does them (x·(1 + f), then + o): the same float32 roundings.
                batch = batch * intensity[:, 0].view(shape)
                batch = batch + intensity[:, 1].view(shape)
            out[key] = batch
        return out
