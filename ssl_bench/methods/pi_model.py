"""pi_model: consistency of two stochastic passes of one network (Laine & Aila 2017), as docs/methods.md
("pi_model") defines it.

Each image, labeled and unlabeled, goes through the student twice, with independent input noise and
independent dropout masks (the protocol's backbone has model.dropout = 0.1); consistency = MSE between the
two softmax maps over all of them. Gradients flow through both passes, as in Laine & Aila's Π-model. With
model.dropout = 0 the passes differ only by their noise and the term is inert (README "Results").

Cheapest correct arrangement: the supervised DiceCE is taken on the first noisy pass of the labeled images
(Laine & Aila's supervised term is on a stochastic pass too), so no clean pass is paid for. Forwards per
step: 2·(L + U), all with gradients, which is the minimum; each pair of passes is one batched forward.
"""

from __future__ import annotations

from typing import Tuple

import torch

from ssl_bench.losses.consistency import probability_mse
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.methods.base_config import NoisyConsistencyConfig
from ssl_bench.registry import register_method
from ssl_bench.utils.input_noise import add_clipped_noise


@register_method("pi_model")
class PiModel(SegmentationMethod):
    plot_colour = "#1f77b4"
    config_class = NoisyConsistencyConfig
    uses_unlabeled = True

    @classmethod
    def supervised_passes(cls, cfg):
        return {"student": [2 * cfg.data.labeled_batch_size]}

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        return {"student": [2 * cfg.data.unlabeled_batch_size]}

    def two_stochastic_passes(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits of two noisy passes, as one forward over both copies (each copy draws its own noise and masks)."""
        m = self.cfg.method
        logits = self.net(add_clipped_noise(torch.cat([images, images]), m.noise_std, m.noise_clip))
        return logits.chunk(2)

    def supervised_loss(self, labeled, cache):
        first, second = self.two_stochastic_passes(labeled["image"])
        cache["labeled_passes"] = (first, second)
        return self.dice_ce(first, labeled["label"])

    def unsupervised_loss(self, batch, cache):
        first_labeled, second_labeled = cache["labeled_passes"]
        first_unlabeled, second_unlabeled = self.two_stochastic_passes(batch["unlabeled"]["image"])
        first = torch.cat([first_labeled, first_unlabeled]).softmax(dim=1)
        second = torch.cat([second_labeled, second_unlabeled]).softmax(dim=1)
        return probability_mse(first, second)
