"""ua_mt: uncertainty-aware Mean Teacher (Yu et al. 2019), as docs/methods.md ("ua_mt") defines it.

Mean Teacher whose teacher makes K stochastic passes over the unlabeled images, each with its own input
noise and, in train mode, its own dropout masks. p̄ = their mean softmax, uncertainty = the entropy of p̄
per voxel, and the consistency MSE counts only voxels with uncertainty < H(t) = (0.75 + 0.25·ramp(t))·ln C,
normalised by the number of kept voxels; ramp is the λ(t) ramp-up (same sigmoid, same T_r). The kept
fraction is logged as train/kept_fraction. With model.dropout = 0 the K passes differ only by their input
noise, agree, and the filter keeps every voxel (README "Results").

The consistency target is the first of the K passes: a teacher prediction under its own noise, exactly
Mean Teacher's target. (Yu et al.'s code spends a separate (K+1)-th pass on it.)

Forwards per step: student L + U with gradients, as Mean Teacher; teacher K·U without gradients, as one
batched forward over K·U images rather than K forwards of U, which is the analytic minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.config import AT_LEAST_ONE, Range
from ssl_bench.losses.consistency import predictive_entropy, probability_mse, uncertainty_threshold
from ssl_bench.methods.mean_teacher import MeanTeacher, MeanTeacherConfig
from ssl_bench.registry import register_method


@dataclass
class UAMTConfig(MeanTeacherConfig):
    # Yu et al. 2019: K = 8 stochastic teacher passes; entropy threshold from 0.75 to 1.0 of ln C.
    mc_passes: int = 8
    threshold_start: float = 0.75
    threshold_end: float = 1.0

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(AT_LEAST_ONE, "mc_passes")
        self.check(Range(lambda v: self.threshold_start <= v, "must be >= method.threshold_start"), "threshold_end")


@register_method("ua_mt")
class UAMT(MeanTeacher):
    plot_colour = "#2ca02c"
    config_class = UAMTConfig

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        unlabeled = cfg.data.unlabeled_batch_size
        return {"student": [unlabeled], "teacher": [cfg.method.mc_passes * unlabeled]}

    def threshold(self) -> float:
        m = self.cfg.method
        return uncertainty_threshold(self.rampup(), self.num_classes, m.threshold_start, m.threshold_end)

    def unsupervised_loss(self, batch, cache):
        images = batch["unlabeled"]["image"]
        passes = self.cfg.method.mc_passes
        with torch.no_grad():
            stacked = self.perturb(torch.cat([images] * passes))
            teacher_probs = self.teacher(stacked).softmax(dim=1).unflatten(0, (passes, images.shape[0]))
            keep = predictive_entropy(teacher_probs.mean(dim=0)) < self.threshold()
        self.log("train/kept_fraction", keep.float().mean(), batch_size=images.shape[0])
        return probability_mse(self.student_probs(images), teacher_probs[0], keep)
