"""The LightningDataModule every method trains on.

Training batches are ``{"labeled": {...}, "unlabeled": {...}}`` from Lightning's CombinedLoader; the
unlabeled stream exists only for methods that use it. Every method sees the same transforms, patch
and batch sizes (the protocol's "same budget"). Validation and test cases come whole, one per batch,
for sliding-window inference and 3D metrics.

Labeled training batches carry ``annotated`` (B, K): the partial-annotation flags of their cases
(ssl_bench/data/partial.py; all True unless data.partial.alpha > 0). Removed organs are background in
``label`` for every method; only the flags tell SMILE which background is ambiguous.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from monai import transforms as T
from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate, set_track_meta
from torch.utils.data import DistributedSampler

from ssl_bench.config import ConfigError, run_seed
from ssl_bench.data.device_augment import (HOST_KEYS, AugmentationParameters, DeviceBatches, collate_parameters,
                                           parameters_to_tensors)
from ssl_bench.data.manifest import Manifest
from ssl_bench.data.partial import RemoveUnannotatedOrgans
from ssl_bench.data.splits import PoolSplit
from ssl_bench.data.stream import PositionSeeded, StreamSampler, stream_seed


def _is_training_batch(batch) -> bool:
    """A batch of train_dataloader's (parts "labeled" and maybe "unlabeled"), not of an evaluation loader."""
    return isinstance(batch, dict) and "labeled" in batch


def _labels_as_integers(label) -> torch.Tensor:
    return torch.as_tensor(np.asarray(label)).round().long()


def _base_transforms(keys: Sequence[str]) -> list:
    """Deterministic (cached) part: load, channel first, z-score the image, labels as integers."""
    steps = [
        T.LoadImaged(keys=list(keys), image_only=True),
        T.EnsureChannelFirstd(keys=list(keys), channel_dim="no_channel"),
        T.EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False),
        # z-score per image, as nnU-Net does for MRI.
        T.NormalizeIntensityd(keys=["image"], channel_wise=True),
    ]
    if "label" in keys:
        # Some MSD labels are float32 holding integers; verify has checked they are integral.
        steps.append(T.Lambdad(keys=["label"], func=_labels_as_integers))
    return steps


def inference_transforms() -> T.Compose:
    """What evaluation does to an image before the network (load, channel first, z-score), for new images
    (``ssl-bench predict``): ``{"image": path}`` in, ``{"image": (1, *volume) float32}`` out."""
    return T.Compose(_base_transforms(("image",)))


def _train_transforms(keys: Sequence[str], cfg) -> list:
    d = cfg.data
    keys = list(keys)
    steps = []
    if d.spatial_dims == 2:
        # One random slice of the volume along slice_axis, then drop that axis.
        roi = [-1, -1, -1]
        roi[d.slice_axis] = 1
        steps += [T.RandSpatialCropd(keys=keys, roi_size=roi, random_size=False),
                  T.SqueezeDimd(keys=keys, dim=d.slice_axis + 1)]
    steps += [
        T.SpatialPadd(keys=keys, spatial_size=list(d.patch_size)),
        T.RandSpatialCropd(keys=keys, roi_size=list(d.patch_size), random_size=False),
    ]
    steps += [T.RandFlipd(keys=keys, prob=d.flip_prob, spatial_axis=axis) for axis in range(d.spatial_dims)]
    if d.intensity_scale > 0:
        steps.append(T.RandScaleIntensityd(keys=["image"], factors=d.intensity_scale, prob=1.0))
    if d.intensity_shift > 0:
        steps.append(T.RandShiftIntensityd(keys=["image"], offsets=d.intensity_shift, prob=1.0))
    return steps


class SegmentationDataModule(pl.LightningDataModule):
    def __init__(self, cfg, manifest: Manifest, data_root: Path, split: PoolSplit,
                 spacings: Dict[str, Sequence[float]], uses_unlabeled: bool,
                 annotated: Optional[Dict[str, List[bool]]] = None, voxel_index: bool = False):
        """``annotated``: partial-annotation flags per labeled case (None: every organ annotated);
        ``voxel_index``: labeled patches carry each voxel's index in its volume (for per-volume pseudo-labels)."""
        super().__init__()
        self.cfg = cfg
        self.manifest = manifest
        self.dataset_dir = manifest.dataset_dir(data_root)
        self.split = split
        self.spacings = spacings
        self.uses_unlabeled = uses_unlabeled
        n_foreground = manifest.num_classes - 1
        self.annotated = annotated or {case_id: [True] * n_foreground for case_id in split.labeled}
        self.voxel_index = voxel_index
        self.case_index = {c.id: i for i, c in enumerate(manifest.cases)}
        self._datasets: Dict[str, CacheDataset] = {}
        # data.augment_on_device: per training stream, its volumes, held once and moved to the training device.
        self._device_batches: Dict[str, DeviceBatches] = {}
        self._augment_on_device = bool(cfg.data.augment_on_device)  # read once: a config lookup costs every step

    def setup(self, stage: Optional[str] = None) -> None:
        # Batches need no MONAI metadata (each case's spacing travels as its own key), and tracking it through the
        # random transforms cost as much as the augmentation itself (0.033 against 0.019 s a batch of 4 + 4
        # hippocampus patches, one thread; the batches are identical). MONAI's switch is per process; this is the
        # training (or evaluation) process.
        set_track_meta(False)

    def _records(self, ids: List[str], with_label: bool) -> List[dict]:
        by_id = self.manifest.case_by_id
        out = []
        for case_id in ids:
            case = by_id[case_id]
            rec = {"image": str(self.dataset_dir / case.image), "case_index": self.case_index[case_id],
                   "spacing": torch.tensor(self.spacings[case_id], dtype=torch.float64)}
            if with_label:
                rec["label"] = str(self.dataset_dir / case.label)
            if case_id in self.annotated:
                rec["annotated"] = torch.tensor(self.annotated[case_id], dtype=torch.bool)
            out.append(rec)
        return out

    def unlabeled_ids(self) -> List[str]:
        # At fraction 1.0 there are no unlabeled cases; a method that wants an unlabeled stream then gets
        # the labeled images (their labels unused), so every method runs at every fraction.
        return self.split.unlabeled or self.split.labeled

    def _stream_transforms(self, name: str):
        """A training stream's records, volume keys, deterministic (cached) transforms and random chain."""
        labeled_keys = ("image", "label")
        if name == "labeled":
            recs = self._records(self.split.labeled, True)
            patch_keys = labeled_keys + (("voxel_index",) if self.voxel_index else ())
            cached = _base_transforms(labeled_keys) + [RemoveUnannotatedOrgans(voxel_index=self.voxel_index)]
        else:
            recs, patch_keys = self._records(self.unlabeled_ids(), False), ("image",)
            cached = _base_transforms(patch_keys)
        return recs, patch_keys, cached, _train_transforms(patch_keys, self.cfg)

    def _dataset(self, name: str) -> CacheDataset:
        if name not in self._datasets:
            if name in ("labeled", "unlabeled"):
                recs, _, cached, chain = self._stream_transforms(name)
                xform = T.Compose(cached + chain)
            else:
                ids = self.manifest.validation if name == "validation" else self.manifest.test
                recs = self._records(ids, True)
                xform = T.Compose(_base_transforms(("image", "label")))
            self._datasets[name] = CacheDataset(recs, xform, cache_rate=1.0, num_workers=None, progress=False)
        return self._datasets[name]

    def _device_stream(self, name: str, seed: int) -> AugmentationParameters:
        """data.augment_on_device: the stream's volumes, loaded once (deterministic transforms only), and the dataset
        of its items' augmentation parameters, which the loader yields; on_after_batch_transfer applies them."""
        recs, keys, cached, chain = self._stream_transforms(name)
        d = self.cfg.data
        if name not in self._device_batches:
            loaded = CacheDataset(recs, T.Compose(cached), cache_rate=1.0, num_workers=None, progress=False)
            items = [loaded[i] for i in range(len(loaded))]
            self._device_batches[name] = DeviceBatches({k: [item[k] for item in items] for k in keys},
                                                       d.patch_size, d.spatial_dims, d.slice_axis)
        return AugmentationParameters(T.Compose(chain), recs, self._device_batches[name].shapes, seed,
                                      d.spatial_dims, d.slice_axis)

    def labeled_volumes_loader(self) -> DataLoader:
        """Whole labeled training volumes, one per batch, with ``label`` (removed organs as background),
        ``label_full`` (untouched) and ``annotated``: what SMILEr relabels and measures. Not cached: read
        once per relabeling round."""
        recs = self._records(self.split.labeled, True)
        xform = T.Compose(_base_transforms(("image", "label")) + [RemoveUnannotatedOrgans(keep_full=True)])
        return DataLoader(Dataset(recs, xform), batch_size=1, shuffle=False, num_workers=0)

    def _train_loader(self, name: str, batch_size: int) -> DataLoader:
        # Sampling with replacement for the whole iteration budget: training length is trainer.max_steps,
        # never epochs, so every method sees the same number of batches whatever the split sizes. The stream is
        # a function of position (ssl_bench/data/stream.py), so a resumed run continues it where it stopped.
        seed = stream_seed(run_seed(self.cfg), name)
        if self.cfg.data.augment_on_device:
            items, collate = self._device_stream(name, seed), collate_parameters
        else:
            items, collate = PositionSeeded(self._dataset(name), seed), list_data_collate
        # Under DDP Lightning deals the stream out to the ranks (rank r takes positions r, r + W, ...), each rank taking
        # batch_size / W items a step: the global batch is the protocol's, the positions one process would take.
        world = self._world_size()
        if batch_size % world:
            raise ConfigError(f"data.{name}_batch_size={batch_size} must be divisible by the {world} training "
                              "processes (the global batch is the protocol's, dealt out between them)")
        sampler = StreamSampler(len(items), self.cfg.trainer.max_steps * batch_size, seed,
                                start=self._steps_taken() * batch_size, rank=self._rank(), world_size=world)
        return DataLoader(items, batch_size=batch_size // world, sampler=sampler,
                          num_workers=self.cfg.data.num_workers, collate_fn=collate,
                          persistent_workers=self.cfg.data.num_workers > 0, drop_last=True,
                          # its own generator, so that making the loader draws nothing from the global one
                          generator=torch.Generator().manual_seed(seed))

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _steps_taken(self) -> int:
        """Training steps already taken: a resumed run's checkpoint step (Lightning restores it before it asks for
        the loaders), so its streams continue where they stopped."""
        return self.trainer.global_step if self.trainer is not None else 0

    def train_dataloader(self):
        loaders = {"labeled": self._train_loader("labeled", self.cfg.data.labeled_batch_size)}
        if self.uses_unlabeled:
            loaders["unlabeled"] = self._train_loader("unlabeled", self.cfg.data.unlabeled_batch_size)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """A training batch moves to the device except its HOST_KEYS, which a step reads as Python numbers: read on
        the device, each would make the host wait for the device's queue, every step. With data.augment_on_device its
        augmentation parameters, plain Python from the loader, become tensors here."""
        if not _is_training_batch(batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        if self._augment_on_device:
            batch = {name: parameters_to_tensors(params) for name, params in batch.items()}
        return {name: {key: value if key in HOST_KEYS else move_data_to_device(value, device)
                       for key, value in part.items()}
                for name, part in batch.items()}

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """data.augment_on_device: a training batch of augmentation parameters, now on the training device, becomes
        the batch of patches (evaluation batches pass unchanged)."""
        if _is_training_batch(batch) and self._augment_on_device:
            return {name: self._device_batches[name].materialize(params) for name, params in batch.items()}
        return batch

    def training_batches(self, device: torch.device = torch.device("cpu")):
        """The training batches as a training step receives them, on ``device``, outside a Trainer (make perf,
        diagnose, tests)."""
        for batch, _, _ in self.train_dataloader():
            yield self.on_after_batch_transfer(self.transfer_batch_to_device(batch, device, 0), 0)

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(self._dataset(name), batch_size=1, shuffle=False, num_workers=0)

    def val_dataloader(self):
        return self._eval_loader("validation")

    def test_dataloader(self):
        return self._eval_loader("test")

    def test_shard_loader(self, rank: int, world_size: int) -> DataLoader:
        """The test cases of one DDP rank, whole, one per batch (padded to equal shares as Lightning's test loader is),
        for an evaluation inside another loop (the test-selection audit, ssl_bench/run/test_selection_audit.py). Its
        own generator: iterating it draws nothing from the global random state."""
        sampler = DistributedSampler(self._dataset("test"), num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(self._dataset("test"), batch_size=1, sampler=sampler, num_workers=0,
                          generator=torch.Generator())
