"""Stage 1 of ``contrastive`` (Chaitanya et al., NeurIPS 2020): global + local contrastive pretraining of the
shared backbone on every training-pool image, without labels.

A pretraining is an ordinary run folder keyed by dataset and draw only, ``runs/<dataset>/contrastive_pretrain
[-<tag>]/draw<d>/``, shared by every labeled fraction of the draw. It holds ``config.yaml``, ``cases.json`` (the
images it trained on), ``csv/`` logs, ``checkpoints/`` (``last.ckpt`` for resuming, and ``backbone.pt``: the
backbone weights that fine-tuning loads with ``model.init_from``) and ``pretrain.json`` (its cost), written
last: its presence marks a finished pretraining, which is then reused, never redone.

One step: C crops (``volumes`` × ``partitions``, ssl_bench/data/pretraining.py; in 3D, slabs of the training
patch along the main axis, ``crop_size``), each in two augmentations
(random flips and 90° rotation, intensity scale and shift), go through the backbone in one forward pass.
Global loss: NT-Xent with the GD- positives on a projection of the pooled encoder bottleneck. Local loss: the
decoder feature maps of the two augmentations are mapped back to the crop's orientation, cut into a grid of
regions, projected, and contrasted region by region within each crop. Loss = global + local_weight · local.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from ssl_bench.config import run_seed, to_yaml
from ssl_bench.data.dataset import resolve_dataset
from ssl_bench.data.pretraining import PartitionCropBatches, load_volumes
from ssl_bench.data.stream import OneEpochStreams, streams_resume_by_position
from ssl_bench.data.verify import verify_or_raise
from ssl_bench.losses.contrastive import local_contrastive_loss, nt_xent, partition_positive_mask, region_embeddings
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.nets.backbone import build_backbone
from ssl_bench.nets.pretrained import architecture, save_backbone
from ssl_bench.run.callbacks import (CHECKPOINTS, LAST, CheckpointOnStop, ResumeCheckpoint, StepTimer,
                                     TrainingRandomState, fit_stoppably)
from ssl_bench.run.console import RunCSVLogger, StepProgressBar, TimeEstimate, checkpoint_step
from ssl_bench.run.identity import UnreadableResult, check_same_run, read_metrics
from ssl_bench.run.paths import pretrain_run_dir
from ssl_bench.run.resume import resume_point
from ssl_bench.run.run_lock import run_folder_lock
from ssl_bench.utils.io import atomic_write_json, atomic_write_text
from ssl_bench.utils.transforms import FlipRotation, random_flip_rotation

# The default 3D pretraining slab, in network strides: three (a bottleneck three voxels thick), chosen on
# hippocampus validation Dice among one, two and three strides (README "Results on hippocampus"). One stride
# (the patch over the 4 partitions, the default until session 11) lost to supervised; three was level with it.
DEFAULT_SLAB_STRIDES = 3

STAGE = "contrastive_pretrain"
RECORD = "pretrain.json"
BACKBONE = Path("checkpoints") / "backbone.pt"


def projection_head(channels: int, out_dim: int) -> nn.Module:
    """Two dense layers with a ReLU between them (Chaitanya et al.'s projection heads)."""
    return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, out_dim))


class ContrastivePretraining(pl.LightningModule):
    # The protocol's optimizer and schedule, over method.pretrain_steps (the config's trainer.max_steps here).
    optimizer_with_schedule = SegmentationMethod.optimizer_with_schedule
    lr_schedule = SegmentationMethod.lr_schedule

    def __init__(self, cfg: DictConfig, num_classes: int, batches: Optional[PartitionCropBatches] = None):
        super().__init__()
        self.cfg = cfg
        self.batches = batches
        self.net = build_backbone(cfg.model, cfg.data.spatial_dims, in_channels=1, out_channels=num_classes)
        bottleneck_channels, decoder_channels = self._feature_channels()
        m = cfg.method
        self.global_head = projection_head(bottleneck_channels, m.projection_dim)
        self.local_head = projection_head(decoder_channels, m.projection_dim)

    def _feature_channels(self) -> Tuple[int, int]:
        probe = torch.zeros((1, 1, *crop_size(self.cfg)))
        was_training = self.net.training
        with torch.no_grad():
            features = self.net.eval().forward_features(probe)
        self.net.train(was_training)
        return features.bottleneck.shape[1], features.decoder.shape[1]

    def augment(self, crops: torch.Tensor) -> Tuple[torch.Tensor, List[FlipRotation]]:
        """A random flip/rotation and intensity scale and shift per crop (the data section's ranges)."""
        d, spatial = self.cfg.data, crops.shape[2:]
        transforms = [random_flip_rotation(spatial, self.cfg.method.flip_prob) for _ in range(crops.shape[0])]
        moved = torch.cat([t.apply(c) for t, c in zip(transforms, crops.split(1))])
        per_crop = (crops.shape[0],) + (1,) * (crops.dim() - 1)
        scale = 1 + (2 * torch.rand(per_crop, device=crops.device) - 1) * d.intensity_scale
        shift = (2 * torch.rand(per_crop, device=crops.device) - 1) * d.intensity_shift
        return moved * scale + shift, transforms

    def losses(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        crops, m = batch["image"], self.cfg.method
        n = crops.shape[0]
        view_a, transforms_a = self.augment(crops)
        view_b, transforms_b = self.augment(crops)
        features = self.net.forward_features(torch.cat([view_a, view_b]))
        z = self.global_head(features.bottleneck.flatten(2).mean(dim=2))
        two = torch.arange(2, device=crops.device).repeat_interleave(n)
        mask = partition_positive_mask(batch["volume_id"].repeat(2), batch["partition"].repeat(2), two)
        global_loss = nt_xent(z, mask, m.temperature)
        # Undo each augmentation's spatial transform, so region r is the same part of the crop in both views.
        decoder_a, decoder_b = features.decoder.split(n)
        aligned = [torch.cat([t.inverse(f) for t, f in zip(ts, maps.split(1))])
                   for ts, maps in ((transforms_a, decoder_a), (transforms_b, decoder_b))]
        regions = [self.local_head(region_embeddings(f, m.local_grid)) for f in aligned]
        local_loss = local_contrastive_loss(regions[0], regions[1], m.local_temperature)
        return {"global": global_loss, "local": local_loss, "total": global_loss + m.local_weight * local_loss}

    def training_step(self, batch, batch_idx):
        losses = self.losses(batch)
        for name, value in losses.items():
            self.log(f"pretrain/loss_{name}", value, batch_size=batch["image"].shape[0])
        return losses["total"]

    def configure_optimizers(self):
        return self.optimizer_with_schedule(self.parameters())

    def train_dataloader(self) -> DataLoader:
        # Batch i is a function of i alone: a resumed pretraining continues at its checkpoint's step (Lightning has
        # restored global_step by the time it asks), with its random state restored by TrainingRandomState.
        remaining = range(self.trainer.global_step, len(self.batches))
        return DataLoader(self.batches, batch_size=None, sampler=remaining, num_workers=self.cfg.data.num_workers)


def total_stride(model_cfg) -> int:
    """How much the backbone downsamples: every input side must be a multiple of it."""
    if model_cfg.arch == "basic_unet":
        return 2 ** 4  # MONAI BasicUNet: four 2x poolings
    return math.prod(model_cfg.strides)


def crop_size(cfg: DictConfig) -> List[int]:
    """The pretraining crops' size: the training patch, except a slab along the main axis in 3D."""
    d, m = cfg.data, cfg.method
    size = list(d.patch_size)
    if d.spatial_dims == 3:
        stride = total_stride(cfg.model)
        derived = min(DEFAULT_SLAB_STRIDES * stride, max(stride, size[d.slice_axis] // stride * stride))
        size[d.slice_axis] = m.slab_thickness or derived
    return size


def pretraining_config(cfg: DictConfig) -> DictConfig:
    """The fine-tuning config as the pretraining sees it: its own budget, no fraction and no partial annotation
    (it uses no labels, and every fraction of a draw shares it), no init_from."""
    pcfg = cfg.copy()
    pcfg.data.fraction, pcfg.data.n_labeled, pcfg.data.labeled_selection = 1.0, None, "draw"
    pcfg.data.partial.alpha = 0.0  # no labels are used
    pcfg.trainer.max_steps = cfg.method.pretrain_steps or cfg.trainer.max_steps
    pcfg.model.init_from = None
    return pcfg


def ensure_pretrained(cfg: DictConfig) -> Dict[str, object]:
    """The pretraining record (pretrain.json) of cfg's dataset and draw, pretraining first if it is missing. Cells of
    one draw that run at the same time (a sweep's jobs) pretrain once: the others wait for the folder's lock
    (ssl_bench/run/run_lock.py) and then reuse the pretraining."""
    run = pretrain_run_dir(cfg, STAGE)
    with run_folder_lock(run, wait=True):
        return _pretrain_once(cfg, run)


def backbone_path(cfg: DictConfig) -> Path:
    """Where the pretraining of cfg's dataset and draw writes its backbone (pretrain.json's "checkpoint")."""
    return pretrain_run_dir(cfg, STAGE) / BACKBONE


def record_of_backbone(checkpoint: Path) -> Optional[Dict[str, object]]:
    """The record (pretrain.json) of the pretraining that wrote ``checkpoint`` (its run folder's
    checkpoints/backbone.pt), or None for a backbone made elsewhere: a fine-tuning given the checkpoint by hand
    (model.init_from) still records which pretraining it starts from, and its cost."""
    record_path = Path(checkpoint).parent.parent / RECORD
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    return record if Path(record["checkpoint"]).parts[-2:] == Path(checkpoint).parts[-2:] else None


def _pretrain_once(cfg: DictConfig, run: Path) -> Dict[str, object]:
    started, pcfg = time.perf_counter(), pretraining_config(cfg)
    check_same_run(run, pcfg)  # a finished pretraining is reused only by runs that would compute the same one
    record_path = run / RECORD
    if record_path.is_file():
        try:
            record = read_metrics(record_path, required=("run_dir", "checkpoint", "steps"))
        except UnreadableResult as err:
            print(f"{err}: not counted as finished; the pretraining goes on from {run / CHECKPOINTS / LAST}, which "
                  "rewrites it", file=sys.stderr)
        else:
            print(f"{run}: contrastive pretraining already finished, reused")
            return record
    print(f"{run}: contrastive pretraining (shared by every fraction of draw {cfg.data.draw})", flush=True)
    manifest, root = resolve_dataset(pcfg)
    verify_or_raise(manifest, root, manifest.pool)  # training pool only: validation and test never seen
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", to_yaml(pcfg))
    atomic_write_json(run / "cases.json", {"pool": manifest.pool})
    seed = run_seed(pcfg)
    pl.seed_everything(seed, workers=True)
    by_id, d, m = manifest.case_by_id, pcfg.data, pcfg.method
    volumes = load_volumes([manifest.dataset_dir(root) / by_id[c].image for c in manifest.pool])
    batches = PartitionCropBatches(volumes, m.pretrain_volumes, m.partitions, d.slice_axis, crop_size(pcfg),
                                   pcfg.trainer.max_steps, seed)
    module = ContrastivePretraining(pcfg, manifest.num_classes, batches)
    timer, t = StepTimer(started=started), pcfg.trainer
    stop = CheckpointOnStop(run / CHECKPOINTS / LAST)
    saver = ResumeCheckpoint(run / CHECKPOINTS / LAST, every_n_train_steps=t.val_every_n_steps)
    resume = resume_point(run / CHECKPOINTS / LAST, option=None)
    progress = [StepProgressBar()] if t.enable_progress_bar else []
    trainer = pl.Trainer(max_steps=t.max_steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                         accelerator=t.accelerator, devices=1, precision=t.precision, deterministic=t.deterministic,
                         log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.enable_progress_bar,
                         enable_model_summary=False, default_root_dir=str(run),
                         logger=RunCSVLogger(run, checkpoint_step(resume) if resume is not None else 0),
                         callbacks=[saver, stop, timer, TrainingRandomState(), OneEpochStreams(), TimeEstimate(timer),
                                    *progress])
    with streams_resume_by_position():
        fit_stoppably(trainer, stop, module, ckpt_path=None if resume is None else str(resume))
    arch = architecture(pcfg.model, d.spatial_dims, in_channels=1, out_channels=manifest.num_classes)
    save_backbone(module.net, run / BACKBONE, arch)
    record = {"dataset": d.name, "draw": d.draw, "run_dir": str(run), "checkpoint": str(run / BACKBONE),
              "steps": trainer.global_step, "resumed_from_step": trainer.global_step - timer.steps_this_process,
              "seconds_per_step": timer.seconds_per_step, "wall_time_s": timer.wall_time_s, "n_images": len(volumes)}
    atomic_write_json(record_path, record)  # last: its presence marks the pretraining finished
    return record
