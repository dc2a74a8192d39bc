"""transform_consistency: equivariance under flips and 90° rotations (Bortsova et al. 2019; the seed's
"F-model"), as docs/methods.md ("transform_consistency") defines it.

For each unlabeled image u a random T (spatial flips, then quarter turns in a random plane, only those that
keep the patch shape; see ssl_bench/utils/transforms.py) and ℓ = mean ||T(f(u)) - f(T(u))||² on softmax
maps. Both branches get gradients (the two branches of Bortsova et al.'s Siamese network share weights
and are trained together). T is an exact index permutation, so a network that is equivariant scores 0.

Forwards per step: student L (the base's supervised pass) + 2U (u and T(u) in one batched forward), all
with gradients: the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.config import UNIT_INTERVAL
from ssl_bench.losses.consistency import probability_mse
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.methods.base_config import SemiSupervisedConfig
from ssl_bench.registry import register_method
from ssl_bench.utils.transforms import apply_each, random_flip_rotation


@dataclass
class TransformConsistencyConfig(SemiSupervisedConfig):
    # Probability of flipping each spatial axis; 0.5 makes every combination of flips equally likely.
    flip_prob: float = 0.5

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(UNIT_INTERVAL, "flip_prob")


@register_method("transform_consistency")
class TransformConsistency(SegmentationMethod):
    plot_colour = "#d62728"
    config_class = TransformConsistencyConfig
    uses_unlabeled = True

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        return {"student": [2 * cfg.data.unlabeled_batch_size]}

    def unsupervised_loss(self, batch, cache):
        images = batch["unlabeled"]["image"]
        transforms = [random_flip_rotation(images.shape[2:], self.cfg.method.flip_prob) for _ in images]
        probs = self.net(torch.cat([images, apply_each(transforms, images)])).softmax(dim=1)
        of_images, of_transformed = probs.chunk(2)
        return probability_mse(apply_each(transforms, of_images), of_transformed)
