"""ad_mt: Alternate Diverse Teaching (Zhao et al., ECCV 2024), as docs/methods.md ("ad_mt") defines it, with the
defaults of the authors' 3D code (ZhenZHAO/AD-MT, code/train_post_3d_aut.py, cfgs/config_3d_la_aut.yml).

One student, two EMA teachers. Random periodic alternation: the run is cut into periods of U{1..P} steps, the teachers
taking turns, and after each optimizer step only the period's teacher receives the student's EMA update
(method.alternate=false updates both at every step: the control, a two-teacher Mean Teacher with the same views and
losses, experiments/sweeps/ad_mt_control.yaml). The periods alternate the strong view too: strong intensity
augmentation of the weak view in teacher 1's, a CutMix of it in teacher 2's (each box from another unlabeled image,
with that image's target). Each step both teachers label the weak view (the period's teacher in train mode, the other
in eval mode, as the authors'); their entropy-weighted ensemble gives the label and its confidence, except where the
teachers disagree and the student's own weak-view label differs and is more confident (conflict combating). L_u = CE
of the student's strong view against that target on the voxels of confidence >= τ; the base adds λ(t)·L_u.

The math is in ssl_bench/losses/alternate_teaching.py; docs/methods.md lists where this differs from the authors'
code. Forwards per step: student L (supervised), U weak without gradients, U strong; each teacher U without.
Evaluated: the student (primary, as the authors test their best student) and both teachers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.config import AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, UNIT_INTERVAL, run_seed
from ssl_bench.losses.alternate_teaching import (alternation_ends, beta_cutmix_boxes, combat_conflicts,
                                                 confident_cross_entropy, entropy_ensemble, teacher_of_step)
from ssl_bench.losses.mixing import cutmix, cutmix_partners, paste
from ssl_bench.losses.pseudo_label import hard_pseudo_labels
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.methods.base_config import SemiSupervisedConfig
from ssl_bench.registry import register_method
from ssl_bench.utils.ema import ema_update, frozen_copy
from ssl_bench.utils.strong_augment import StrongIntensity, strong_intensity


@dataclass
class ADMTConfig(SemiSupervisedConfig):
    """AD-MT (Zhao et al., ECCV 2024); each default is the authors' left-atrium setting (config_3d_la_aut.yml)."""
    # consistency 2.0 with the sigmoid ramp over consistency_rampup 40 "epochs" of 150 iterations: 6000 of 15000.
    lambda_max: float = 2.0
    rampup_fraction: float = 0.4
    # ema_decay 0.99 for the teacher being updated.
    ema_decay: float = 0.99
    # The longest period, in steps (alt_param_updating_period_iters 19, "half epoch" of LA; 50 for ACDC); each period
    # drawn from U{1..alternate_every} (alt_flag_updating_period_random: True), else exactly alternate_every.
    alternate_every: int = 19
    random_period: bool = True
    # false: both teachers take every EMA update (the control: a two-teacher Mean Teacher, same views and losses).
    alternate: bool = True
    # conf_threshold 0.8 (LA; 0.95 for ACDC): L_u counts the voxels whose target confidence is at least this.
    confidence_threshold: float = 0.8
    # Teacher 1's strong view (WeakStrongAugment: brightness / contrast ±0.5 with p 0.8, Gaussian noise of σ ~ U(0.1,
    # 1.0) with p 0.2) as this project's contrast factor U(1 ± contrast_range) and noise std U(0, noise_std_max).
    contrast_prob: float = 0.8
    contrast_range: float = 0.5
    noise_prob: float = 0.2
    noise_std_max: float = 1.0
    # Teacher 2's CutMix box: λ ~ Beta(4, 4) per batch, each side sqrt(1 - λ) of the patch's (mixaugs.rand_bbox_3d).
    cutmix_beta: int = 4

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(BELOW_ONE, "ema_decay", "contrast_range")
        self.check(AT_LEAST_ONE, "alternate_every", "cutmix_beta")
        self.check(UNIT_INTERVAL, "confidence_threshold", "contrast_prob", "noise_prob")
        self.check(NON_NEGATIVE, "noise_std_max")


@register_method("ad_mt")
class AlternateDiverseTeaching(SegmentationMethod):
    config_class = ADMTConfig
    uses_unlabeled = True

    def __init__(self, cfg, class_names, case_ids):
        super().__init__(cfg, class_names, case_ids)
        self.teacher1, self.teacher2 = frozen_copy(self.net), frozen_copy(self.net)
        m = self.cfg.method
        # A function of the run's seed and the step alone, so a resumed run alternates as an uninterrupted one.
        self._period_ends = alternation_ends(self.cfg.trainer.max_steps, m.alternate_every, m.random_period,
                                             run_seed(self.cfg))

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        unlabeled = cfg.data.unlabeled_batch_size
        return {"student": [unlabeled, unlabeled], "teacher1": [unlabeled], "teacher2": [unlabeled]}

    def evaluation_networks(self):
        return {"student": self.net, "teacher1": self.teacher1, "teacher2": self.teacher2}

    def period_teacher(self) -> int:
        """0 or 1: the teacher whose period holds this step."""
        return teacher_of_step(self._period_ends, self.global_step)

    def teacher_probs(self, images: torch.Tensor, current: int):
        """Each teacher's softmax, the period's teacher in train mode and the other in eval mode (while training)."""
        probs = []
        for k, teacher in enumerate((self.teacher1, self.teacher2)):
            training = teacher.training
            teacher.train(training and k == current)
            probs.append(teacher(images).softmax(dim=1))
            teacher.train(training)
        return probs

    def strong_view(self, weak: torch.Tensor, maps, current: int, generator: torch.Generator):
        """The period's strong view of ``weak`` and the per-voxel ``maps`` (targets, flags) that go with it."""
        m = self.cfg.method
        if current == 0:
            intensity = StrongIntensity(m.contrast_prob, m.contrast_range, 0.0, (1.0, 1.0), 0.0, (0.0, 0.0),
                                        m.noise_prob, m.noise_std_max)
            return strong_intensity(weak, intensity, generator), maps
        partner = cutmix_partners(weak.shape[0], generator)
        boxes = beta_cutmix_boxes(weak.shape[0], weak.shape[2:], generator, m.cutmix_beta)
        return cutmix(weak, partner, boxes), [paste(x[partner], x, boxes) for x in maps]

    def unsupervised_loss(self, batch, cache):
        m = self.cfg.method
        unlabeled = batch["unlabeled"]
        weak = unlabeled["image"].as_subclass(torch.Tensor)  # plain tensor: MetaTensors do not survive indexing
        current = self.period_teacher()
        with torch.no_grad():
            first, second = self.teacher_probs(weak, current)
            confidence, labels = entropy_ensemble(first, second).max(dim=1, keepdim=True)
            disagree = first.argmax(dim=1, keepdim=True) != second.argmax(dim=1, keepdim=True)
            student_labels, student_confidence = hard_pseudo_labels(self.net(weak))
        strong, maps = self.strong_view(weak, [labels, confidence, disagree, student_labels, student_confidence],
                                        current, self.stream_generator(unlabeled, "ad_mt"))
        labels, confidence, disagree, student_labels, student_confidence = maps
        target, target_confidence = combat_conflicts(labels, confidence, student_labels, student_confidence, disagree)
        self.log("train/conflict_fraction", disagree.float().mean(), batch_size=weak.shape[0])
        self.log("train/confident_fraction", (target_confidence >= m.confidence_threshold).float().mean(),
                 batch_size=weak.shape[0])
        return confident_cross_entropy(self.net(strong), target, target_confidence, m.confidence_threshold)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # Within the step, as Mean Teacher's: global_step is still this step's, a checkpoint at its end holds it.
        current = self.period_teacher()
        for k, teacher in enumerate((self.teacher1, self.teacher2)):
            if k == current or not self.cfg.method.alternate:
                ema_update(teacher, self.net, self.cfg.method.ema_decay)
