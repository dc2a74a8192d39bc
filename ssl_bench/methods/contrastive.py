"""contrastive: global and local contrastive pretraining, then fine-tuning (Chaitanya et al., NeurIPS 2020), as
docs/methods.md ("contrastive") defines it.

Stage 1 (ssl_bench/run/pretrain.py) pretrains the backbone without labels on every training-pool image, once per
dataset and draw, in its own run folder ``runs/<dataset>/contrastive_pretrain/draw<d>/``. Stage 2 is this
method: the same backbone, initialised from stage 1's ``checkpoints/backbone.pt`` (``model.init_from``), trained
with DiceCE on the labeled cases, exactly as ``supervised``. train() calls ``prepare_run`` first, which reuses
the draw's pretraining or runs it if it is missing, so ``ssl-bench train --method contrastive`` (and
``make bench METHOD=contrastive``) does both stages and every fraction of a draw shares one pretraining.
metrics.json reports both stages' cost: the fine-tuning's as for every method, the pretraining's as
``pretrain_seconds_per_step``, ``pretrain_wall_time_s`` and ``pretrain_steps``.

An explicit ``model.init_from=<backbone.pt>`` skips stage 1 and fine-tunes from that checkpoint; when it is a
stage-1 run's backbone, metrics.json records that run and its cost as above. Built outside
train() (tests, ``make perf``) with no ``init_from``, the network is randomly initialised: the per-step cost of
fine-tuning is that of ``supervised``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import open_dict

from ssl_bench.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, MethodConfig, Range
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.registry import register_method
from ssl_bench.run.pretrain import backbone_path, ensure_pretrained, record_of_backbone

# metrics.json keys of the pretraining stage's cost: {metrics key: pretrain.json key}.
PRETRAIN_COST = {"pretrain_seconds_per_step": "seconds_per_step", "pretrain_wall_time_s": "wall_time_s",
                 "pretrain_steps": "steps", "pretrain_run_dir": "run_dir"}


@dataclass
class ContrastiveConfig(MethodConfig):
    """Global and local contrastive pretraining (Chaitanya et al., NeurIPS 2020), then fine-tuning on the
    labeled cases. The pretraining runs once per dataset and draw on every training-pool image, no labels."""
    # Pretraining iterations, a budget of its own reported separately; None: trainer.max_steps, the same
    # iterations as every method's training (Chaitanya et al. pretrain 10000).
    pretrain_steps: Optional[int] = None
    # Volumes per pretraining batch, each giving one crop per partition, each crop in two augmentations.
    pretrain_volumes: int = 4
    # Partitions of the volume's main axis (data.slice_axis); Chaitanya et al.: 4.
    partitions: int = 4
    # 3D: the crops' extent along the main axis (a slab, so that partitions differ: a hippocampus patch is as
    # long as the volume); None: DEFAULT_SLAB_STRIDES (ssl_bench/run/pretrain.py) network strides, at most patch_size
    # along that axis rounded down to a multiple of the stride (at least one stride). 2D crops are slices of their
    # partition.
    slab_thickness: Optional[int] = None
    # NT-Xent temperature of the global and of the local loss (Chaitanya et al.: 0.1 for both).
    temperature: float = 0.1
    local_temperature: float = 0.1
    # Output size of the projection heads (Chaitanya et al.: 128).
    projection_dim: int = 128
    # Local regions: a local_grid^dims grid of cells over the decoder feature map, each its mean feature.
    local_grid: int = 4
    # Pretraining loss = global + local_weight · local.
    local_weight: float = 1.0
    # Probability of flipping each spatial axis in a pretraining augmentation (then a random 90° rotation).
    flip_prob: float = 0.5

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(Range(lambda v: v is None or v >= 1, "must be >= 1 (or null: trainer.max_steps)"), "pretrain_steps")
        self.check(Range(lambda v: v >= 2, "must be >= 2 (positives across volumes, Chaitanya et al.)"),
                   "pretrain_volumes")
        self.check(AT_LEAST_ONE, "partitions", "projection_dim")
        self.check(Range(lambda v: v is None or v >= 1, "must be >= 1 (or null: derived from the patch)"),
                   "slab_thickness")
        self.check(POSITIVE, "temperature", "local_temperature")
        self.check(Range(lambda v: v >= 2, "must be >= 2 (a region needs other regions as negatives)"), "local_grid")
        self.check(NON_NEGATIVE, "local_weight")
        self.check(UNIT_INTERVAL, "flip_prob")


@register_method("contrastive")
class Contrastive(SegmentationMethod):
    plot_colour = "#e377c2"
    config_class = ContrastiveConfig

    @classmethod
    def prepare_run(cls, cfg):
        if cfg.model.init_from:
            record = record_of_backbone(Path(cfg.model.init_from))
            return cfg, {key: record[source] for key, source in PRETRAIN_COST.items()} if record else {}
        record = ensure_pretrained(cfg)
        return cls.run_config(cfg), {key: record[source] for key, source in PRETRAIN_COST.items()}

    @classmethod
    def run_config(cls, cfg):
        if cfg.model.init_from:
            return cfg
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.model.init_from = str(backbone_path(cfg))
        return cfg
