"""smile: learning from partially annotated organs (Petit et al. 2018, the seed "SMILE"), as docs/methods.md
("smile and smiler") defines it.

K = C - 1 sigmoid outputs on the shared backbone, one binary classifier per organ, no background channel.
Loss = Σ_k w_k·BCE(ŷ_k, y*_k) / Σ w (ssl_bench/losses/partial_label.py): where organ k is annotated in the
case (the batch's ``annotated`` flags, data.partial), every voxel counts; where it is not, voxels labeled as
another organ are certain negatives and the rest (background, which holds the removed organ) is ignored.
Optionally + soft Dice on the annotated (case, organ) pairs. Prediction: organ k where sigmoid > threshold,
overlaps resolved by the highest score, background elsewhere, so the usual Dice / HD95 evaluation applies.

Forwards per step: the labeled batch once, as supervised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ssl_bench.config import OPEN_UNIT_INTERVAL, MethodConfig
from ssl_bench.losses.partial_label import decode_sigmoid, smile_loss
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.nets.backbone import Backbone, build_backbone
from ssl_bench.registry import register_method


@dataclass
class SmileConfig(MethodConfig):
    """SMILE (Petit et al. 2018): K sigmoid binary classifiers, BCE weighted by the ambiguity map."""
    # Soft Dice on the annotated (case, organ) pairs added to the BCE (docs/methods.md, "smile and smiler").
    dice_on_annotated: bool = True
    # Organ k is predicted where sigmoid(ŷ_k) > threshold (Petit et al. 2018: 0.5); also SMILEr's
    # "predicted positive".
    threshold: float = 0.5

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(OPEN_UNIT_INTERVAL, "threshold")


@register_method("smile")
class Smile(SegmentationMethod):
    plot_colour = "#17becf"
    config_class = SmileConfig

    @property
    def n_organs(self) -> int:
        return self.num_classes - 1

    def build_network(self) -> Backbone:
        return build_backbone(self.cfg.model, self.cfg.data.spatial_dims, in_channels=1,
                              out_channels=self.num_classes - 1)

    def pseudo_positives(self, labeled: dict) -> Optional[torch.Tensor]:
        """SMILEr's relabeled voxels of this batch; SMILE has none."""
        return None

    def supervised_loss(self, labeled, cache):
        logits = self.net(labeled["image"])
        cache["labeled_logits"] = logits
        return smile_loss(logits, labeled["label"], labeled["annotated"], self.cfg.method.dice_on_annotated,
                          self.pseudo_positives(labeled))

    def decode(self, logits):
        return decode_sigmoid(logits, self.cfg.method.threshold)
