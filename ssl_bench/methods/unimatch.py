"""unimatch: weak-to-strong consistency with a feature-perturbation stream (Yang et al., CVPR 2023), as
docs/methods.md ("unimatch") defines it; FixMatch (Sohn et al. 2020) is its special case method.strong_views=1,
method.feature_perturbation=false (experiments/sweeps/fixmatch.yaml).

The weak view u_w is the unlabeled batch as the protocol augments it (flips, crop, mild intensity). Its prediction,
without gradient, gives the pseudo-label ŷ = argmax p(u_w) and its confidence max p(u_w). Each strong view is u_w
after strong intensity augmentation (contrast, gamma, blur, noise; ssl_bench/utils/strong_augment.py) with a CutMix
box cut from another unlabeled image of the batch, whose pseudo-label and confidence the box's voxels take. The
feature-perturbed stream decodes u_w with channel dropout (p = 0.5) on the encoder's bottleneck
(Backbone.forward_scaled). With L = masked CE + Dice against ŷ on the voxels where the confidence is >= τ:
L_u = 0.5 · mean_k L(p(u_s,k), ŷ_k) + 0.5 · L(p_fp(u_w), ŷ), or the strong views' mean alone without the feature
stream; the base adds λ·L_u (λ = 1, no ramp). Every random draw comes from stream_generator, so a resumed run
draws the same views, boxes and dropout masks.

Forwards per step: the base's L labeled images with gradients; U weak images without; then one batched call of
the strong views and the perturbed weak view, (strong_views + 1)·U images with gradients (FixMatch: U).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List
import torch

from ssl_bench.config import BELOW_ONE, NON_NEGATIVE, UNIT_INTERVAL, Range
from ssl_bench.losses.mixing import cutmix, cutmix_boxes, cutmix_partners, paste
from ssl_bench.losses.pseudo_label import confident_dice_ce, hard_pseudo_labels
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.methods.base_config import SemiSupervisedConfig
from ssl_bench.registry import register_method
from ssl_bench.utils.strong_augment import StrongIntensity, feature_dropout_scale, strong_intensity


@dataclass
class UniMatchConfig(SemiSupervisedConfig):
    """Weak-to-strong consistency with a feature-perturbation stream (UniMatch, Yang et al., CVPR 2023); FixMatch
    (Sohn et al. 2020) is strong_views=1 with feature_perturbation=false. Defaults: the authors' medical code
    (LiheYoung/UniMatch, more-scenarios/medical) unless a comment says otherwise."""
    # λ = 1 without ramp (Yang et al.: loss = (L_x + L_u) / 2, equal weights); a ramp only if the config asks.
    lambda_max: float = 1.0
    rampup_fraction: float = 0.0
    # A pseudo-label counts where max p(u_w) >= τ (the medical code's conf_thresh 0.95, as in the paper).
    confidence_threshold: float = 0.95
    # Strong views per unlabeled image: 2 (UniMatch's dual stream) or 1 (FixMatch).
    strong_views: int = 2
    # The stream that decodes the weak view's bottleneck after channel dropout (UniMatch; false for FixMatch).
    feature_perturbation: bool = True
    # Its dropout rate: nn.Dropout2d(0.5) in the authors' code (there on every encoder level, here on the
    # bottleneck as docs/methods.md ("unimatch") defines it).
    feature_dropout: float = 0.5
    # L against a pseudo-label: "dice_ce", masked CE + Dice (docs/methods.md); "dice", the medical code's masked Dice
    # only.
    pseudo_label_loss: str = "dice_ce"
    # Strong intensity augmentation (ssl_bench/utils/strong_augment.py). Contrast: the medical code's
    # ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8 (on a grey image its contrast term is this blend with the mean);
    # blur: p 0.5, σ ~ U(0.1, 2.0) voxels (the code's PIL GaussianBlur radius); gamma and noise, which docs/methods.md
    # adds, from nnU-Net (Isensee et al. 2021): gamma ~ U(0.7, 1.5) with p 0.3, Gaussian noise of std ~ U(0, 0.1)
    # with p 0.1 (batchgenerators draws its "variance" in (0, 0.1) and uses it as the std).
    contrast_prob: float = 0.8
    contrast_range: float = 0.5
    gamma_prob: float = 0.3
    gamma_range: List[float] = field(default_factory=lambda: [0.7, 1.5])
    blur_prob: float = 0.5
    blur_sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])
    noise_prob: float = 0.1
    noise_std_max: float = 0.1
    # CutMix box from another unlabeled image of the batch, with that image's pseudo-label and confidence
    # (the medical code's obtain_cutmix_box: p 0.5, area U(0.02, 0.4) of the patch, side ratio U(0.3, 1/0.3)).
    cutmix_prob: float = 0.5
    cutmix_area: List[float] = field(default_factory=lambda: [0.02, 0.4])
    cutmix_aspect: List[float] = field(default_factory=lambda: [0.3, 1 / 0.3])

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(UNIT_INTERVAL, "confidence_threshold")
        self.check(Range(lambda v: v in (1, 2), "must be 1 (FixMatch) or 2 (UniMatch)"), "strong_views")
        self.check(BELOW_ONE, "feature_dropout")
        self.check(Range(lambda v: v in ("dice_ce", "dice"), "must be dice_ce or dice"), "pseudo_label_loss")
        self.check(UNIT_INTERVAL, "contrast_prob", "gamma_prob", "blur_prob", "noise_prob", "cutmix_prob")
        self.check(BELOW_ONE, "contrast_range")
        self.check(NON_NEGATIVE, "noise_std_max")
        positive_range = Range(lambda v: len(v) == 2 and 0 < v[0] <= v[1], "must be [low, high] with 0 < low <= high")
        self.check(positive_range, "gamma_range")
        self.check(Range(lambda v: len(v) == 2 and 0 <= v[0] <= v[1], "must be [low, high] with 0 <= low <= high"),
                   "blur_sigma")
        self.check(Range(lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "must be [low, high] in (0, 1]"),
                   "cutmix_area")
        self.check(positive_range, "cutmix_aspect")


@register_method("unimatch")
class UniMatch(SegmentationMethod):
    plot_colour = "#aec7e8"
    config_class = UniMatchConfig
    uses_unlabeled = True

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        m, unlabeled = cfg.method, cfg.data.unlabeled_batch_size
        return {"student": [unlabeled, (m.strong_views + int(m.feature_perturbation)) * unlabeled]}

    def strong_views(self, weak: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                     generator: torch.Generator):
        """method.strong_views strong views of ``weak``, each with its CutMix box, and the pseudo-labels and
        confidences that go with each view."""
        m = self.cfg.method
        intensity = StrongIntensity(m.contrast_prob, m.contrast_range, m.gamma_prob, tuple(m.gamma_range),
                                    m.blur_prob, tuple(m.blur_sigma), m.noise_prob, m.noise_std_max)
        views, targets = [], []
        for _ in range(m.strong_views):
            partner = cutmix_partners(weak.shape[0], generator)
            boxes = cutmix_boxes(weak.shape[0], weak.shape[2:], generator, m.cutmix_prob, tuple(m.cutmix_area),
                                 tuple(m.cutmix_aspect))
            views.append(cutmix(strong_intensity(weak, intensity, generator), partner, boxes))
            targets.append((paste(labels[partner], labels, boxes), paste(confidence[partner], confidence, boxes)))
        return views, targets

    def unsupervised_loss(self, batch, cache):
        m = self.cfg.method
        unlabeled = batch["unlabeled"]
        weak = unlabeled["image"].as_subclass(torch.Tensor)  # plain tensor: MetaTensors do not survive indexing
        with torch.no_grad():
            labels, confidence = hard_pseudo_labels(self.net(weak))
        generator = self.stream_generator(unlabeled, "unimatch")
        views, targets = self.strong_views(weak, labels, confidence, generator)
        if m.feature_perturbation:
            perturbed = torch.arange(len(views) + 1, device=weak.device).repeat_interleave(weak.shape[0]) == len(views)
            scale = feature_dropout_scale(perturbed.shape[0], self.net.bottleneck_channels, weak.ndim - 2,
                                          m.feature_dropout, perturbed, generator)
            logits = self.net.forward_scaled(torch.cat([*views, weak]), scale)
        else:
            logits = self.net(torch.cat(views))
        chunks = logits.split(weak.shape[0])

        def loss(chunk_logits, target, target_confidence):
            return confident_dice_ce(chunk_logits, target, target_confidence, m.confidence_threshold,
                                     with_ce=m.pseudo_label_loss == "dice_ce")

        strong = torch.stack([loss(chunk, *target) for chunk, target in zip(chunks, targets)]).mean()
        self.log("train/confident_fraction", (confidence >= m.confidence_threshold).float().mean(),
                 batch_size=weak.shape[0])
        if not m.feature_perturbation:
            return strong
        return 0.5 * strong + 0.5 * loss(chunks[-1], labels, confidence)
