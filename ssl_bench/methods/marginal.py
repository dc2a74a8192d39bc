"""marginal: the marginal loss for partially annotated organs (Shi et al., Medical Image Analysis 2021; Fang & Yan,
IEEE TMI 2020), as docs/methods.md ("marginal") defines it: SMILE's counterpart for adjacent, mutually exclusive
structures.

The protocol's softmax network (C outputs, background included). In a case where some organs' annotations were
removed (the batch's ``annotated`` flags, data.partial), a voxel labeled background may be any of them: its loss is
on the summed probability of background and the removed organs; an annotated organ's voxels are trained as usual
(ssl_bench/losses/marginal.py). Marginal cross-entropy + marginal Dice, which with every annotation is the
protocol's DiceCE, so at alpha 0 this is `supervised`; optionally Shi et al.'s exclusion term. Prediction: the
argmax over all classes, as every softmax method.

Forwards per step: the labeled batch once, as supervised.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssl_bench.config import NON_NEGATIVE, MethodConfig
from ssl_bench.losses.marginal import marginal_loss
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.registry import register_method


@dataclass
class MarginalConfig(MethodConfig):
    """Marginal cross-entropy and Dice (Shi et al. 2021), optionally with their exclusion term."""
    # Shi et al. 2021 plug the marginal probability into both the cross-entropy and the Dice loss (and the pair is the
    # protocol's DiceCE); false: the marginal cross-entropy alone.
    marginal_dice: bool = True
    # Shi et al. 2021's exclusion loss (its Dice form): organs do not overlap, so a voxel labeled as one organ is a
    # negative for every removed organ. Off by default: the marginal loss alone is the formulation under test.
    exclusion: bool = False
    # Its weight beside the marginal terms when on (1: added unweighted).
    exclusion_weight: float = 1.0

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(NON_NEGATIVE, "exclusion_weight")


@register_method("marginal")
class Marginal(SegmentationMethod):
    plot_colour = "#e7ba52"
    config_class = MarginalConfig

    def supervised_loss(self, labeled, cache):
        logits = self.net(labeled["image"])
        cache["labeled_logits"] = logits
        m = self.cfg.method
        return marginal_loss(logits, labeled["label"], labeled["annotated"], m.marginal_dice,
                             m.exclusion_weight if m.exclusion else 0.0)
