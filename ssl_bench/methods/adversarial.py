"""adversarial: a segmenter against a fully convolutional discriminator D (Zhang et al. 2017 DAN; Hung et al. 2018),
as docs/methods.md ("adversarial") defines the losses. D learns one-hot ground truth against detached probability
maps; its weights enter the segmenter's loss detached, so the segmenter's adversarial terms never train D.

Two optimizers, manual optimization: the protocol's AdamW + schedule for the segmenter, Adam with Hung et al.'s lr
and betas under the same schedule for D; global_step counts segmenter steps only. Forwards per step
(forward_passes): the segmenter on L + U; D on those predictions, then on them detached with the L ground truths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ssl_bench.config import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, MethodConfig, Range
from ssl_bench.losses.adversarial import (AdversarialLosses, confidence_mask, discriminator_accuracy,
                                          discriminator_loss, fool_loss, masked_self_training_loss)
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.nets.discriminator import Discriminator
from ssl_bench.registry import register_method


@dataclass
class AdversarialConfig(MethodConfig):
    """Adversarial learning on probability maps (Zhang et al. 2017 DAN; Hung et al. 2018): defaults are Hung
    et al.'s semi-supervised setting, as docs/methods.md ("adversarial") lists them. The weights are constant (no
    λ(t) ramp): Hung et al. delay the self-training term instead (semi_start_fraction)."""
    # Segmenter's BCE(D(p), 1) on labeled and on unlabeled images (Hung et al.: λ_adv = 0.001).
    lambda_adv_labeled: float = 0.001
    lambda_adv_unlabeled: float = 0.001
    # Confidence-masked self-training CE on unlabeled images (Hung et al.: λ_semi = 0.1, T_semi = 0.2).
    lambda_semi: float = 0.1
    semi_threshold: float = 0.2
    # Self-training starts after this fraction of trainer.max_steps (docs/methods.md: 5% of the run).
    semi_start_fraction: float = 0.05
    # D: Adam, lr 1e-4, betas (0.9, 0.99); four stride-2 convolutions of 64-512 channels (Hung et al.).
    discriminator_lr: float = 1e-4
    discriminator_betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    discriminator_channels: List[int] = field(default_factory=lambda: [64, 128, 256, 512])
    # Hung et al. feed D the probability map only; Zhang et al.'s DAN concatenates the image.
    discriminator_with_image: bool = False

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(NON_NEGATIVE, "lambda_adv_labeled", "lambda_adv_unlabeled", "lambda_semi")
        self.check(UNIT_INTERVAL, "semi_threshold", "semi_start_fraction")
        self.check(POSITIVE, "discriminator_lr")
        self.check(Range(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two values in [0, 1)"),
                   "discriminator_betas")
        self.check(Range(lambda v: len(v) >= 1 and all(c >= 1 for c in v), "must be >= 1 channel counts"),
                   "discriminator_channels")


LOGGED = {"segmenter": "train/loss", "discriminator": "train/loss_discriminator", "supervised": "train/loss_sup",
          "adversarial": "train/loss_adv", "self_training": "train/loss_semi",
          "confident_fraction": "train/confident_fraction", "accuracy_real": "train/d_accuracy_real",
          "accuracy_fake": "train/d_accuracy_fake"}


@register_method("adversarial")
class Adversarial(SegmentationMethod):
    plot_colour = "#8c564b"
    config_class = AdversarialConfig
    uses_unlabeled = True

    @classmethod
    def forward_passes(cls, cfg, step=0):
        labeled, images = cfg.data.labeled_batch_size, cfg.data.labeled_batch_size + cfg.data.unlabeled_batch_size
        return {"student": [images], "discriminator": [images, images + labeled]}

    def __init__(self, cfg, class_names, case_ids):
        super().__init__(cfg, class_names, case_ids)
        self.automatic_optimization = False
        m = self.cfg.method
        in_channels = self.num_classes + (1 if m.discriminator_with_image else 0)
        self.discriminator = Discriminator(self.cfg.data.spatial_dims, in_channels, m.discriminator_channels)

    def training_networks(self):
        return {"student": self.net, "discriminator": self.discriminator}

    def configure_optimizers(self):
        m = self.cfg.method
        discriminator = torch.optim.Adam(self.discriminator.parameters(), lr=m.discriminator_lr,
                                         betas=tuple(m.discriminator_betas))
        return [self.optimizer_with_schedule(self.net.parameters()),
                {"optimizer": discriminator, "lr_scheduler": {"scheduler": self.lr_schedule(discriminator),
                                                              "interval": "step"}}]

    def discriminate(self, probs: torch.Tensor, images: torch.Tensor, train_discriminator: bool) -> torch.Tensor:
        inputs = torch.cat([probs, images], dim=1) if self.cfg.method.discriminator_with_image else probs
        if train_discriminator:
            return self.discriminator(inputs)
        # D's weights detached: gradients reach the input (the segmenter) but never D.
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, frozen, (inputs,))

    def self_training_active(self, step: int) -> bool:
        return step >= self.cfg.method.semi_start_fraction * self.cfg.trainer.max_steps

    def losses(self, batch, step: Optional[int] = None) -> AdversarialLosses:
        """Both losses of one step (no optimizer involved): the pure part of training_step. ``step``: the
        training step they are for (default: the trainer's), e.g. a checkpoint's for ``ssl-bench diagnose``."""
        step = self.global_step if step is None else step
        m = self.cfg.method
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        n_labeled = labeled["image"].shape[0]
        # Plain tensors: slicing a concatenation of MONAI MetaTensors trips over their per-sample metadata.
        images = torch.cat([labeled["image"], unlabeled["image"]]).as_subclass(torch.Tensor)
        labels = labeled["label"].as_subclass(torch.Tensor)
        logits = self.net(images)
        probs = logits.softmax(dim=1)
        supervised = self.dice_ce(logits[:n_labeled], labels)
        fake = self.discriminate(probs, images, train_discriminator=False)
        adversarial = (m.lambda_adv_labeled * fool_loss(fake[:n_labeled])
                       + m.lambda_adv_unlabeled * fool_loss(fake[n_labeled:]))
        confident = confidence_mask(fake[n_labeled:], m.semi_threshold)
        self_training = (masked_self_training_loss(logits[n_labeled:], confident) if self.self_training_active(step)
                         else logits.new_zeros(()))
        segmenter = supervised + adversarial + m.lambda_semi * self_training

        one_hot = F.one_hot(labels[:, 0].long(), self.num_classes).movedim(-1, 1).to(probs.dtype)
        d_logits = self.discriminate(torch.cat([probs.detach(), one_hot]),
                                     torch.cat([images, images[:n_labeled]]), train_discriminator=True)
        d_fake, d_real = d_logits[:images.shape[0]], d_logits[images.shape[0]:]
        return AdversarialLosses(segmenter, discriminator_loss(d_fake, d_real), supervised, adversarial,
                                 self_training, confident.float().mean(), discriminator_accuracy(d_real, True),
                                 discriminator_accuracy(d_fake, False))

    def training_step(self, batch, batch_idx):
        segmenter_opt, discriminator_opt = self.optimizers()
        losses = self.losses(batch)
        segmenter_opt.zero_grad()
        discriminator_opt.zero_grad()
        # One backward for both: their gradients are disjoint (see discriminate and the detached predictions),
        # so this equals two backwards, and DDP sees one backward per forward.
        self.manual_backward(losses.segmenter + losses.discriminator)
        segmenter_opt.step()
        # Through the strategy (precision plugins included) but not Lightning's step counter, which then
        # counts segmenter steps only.
        self.trainer.strategy.optimizer_step(discriminator_opt.optimizer, closure=lambda: None, model=self)
        for scheduler in self.lr_schedulers():
            scheduler.step()
        batch_size = batch["labeled"]["image"].shape[0]
        for field, key in LOGGED.items():
            self.log(key, getattr(losses, field), batch_size=batch_size)
        return losses.segmenter.detach()
