"""mean_teacher: consistency with an exponential-moving-average teacher (Tarvainen & Valpola 2017;
Perone & Cohen-Adad 2019), as docs/methods.md ("mean_teacher") defines it.

The teacher is a frozen copy of the student, θ' ← α θ' + (1 - α) θ after every optimizer step (buffers
too). It is a submodule, so checkpoints hold it and a resumed run continues it, and it has no gradients,
so the base's optimizer skips it. Consistency = MSE(softmax(student(u + η)), softmax(teacher(u + η')))
on the unlabeled images, η and η' independent noise; the teacher's target carries no gradient. Both
networks are evaluated; experiments/method/mean_teacher.yaml makes the teacher the primary result.

Forwards per step (L labeled, U unlabeled images): student L + U with gradients (the base's clean
supervised pass, then the noisy unlabeled pass), teacher U without; that is the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.config import BELOW_ONE
from ssl_bench.losses.consistency import probability_mse
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.methods.base_config import NoisyConsistencyConfig
from ssl_bench.registry import register_method
from ssl_bench.utils.ema import ema_update, frozen_copy
from ssl_bench.utils.input_noise import add_clipped_noise


@dataclass
class MeanTeacherConfig(NoisyConsistencyConfig):
    # EMA decay α of the teacher's weights (Tarvainen & Valpola 2017; Yu et al. 2019: 0.99).
    ema_decay: float = 0.99

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(BELOW_ONE, "ema_decay")


@register_method("mean_teacher")
class MeanTeacher(SegmentationMethod):
    plot_colour = "#ff7f0e"
    config_class = MeanTeacherConfig
    uses_unlabeled = True

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        return {"student": [cfg.data.unlabeled_batch_size], "teacher": [cfg.data.unlabeled_batch_size]}

    def __init__(self, cfg, class_names, case_ids):
        super().__init__(cfg, class_names, case_ids)
        self.teacher = frozen_copy(self.net)

    def evaluation_networks(self):
        return {"student": self.net, "teacher": self.teacher}

    def perturb(self, images: torch.Tensor) -> torch.Tensor:
        return add_clipped_noise(images, self.cfg.method.noise_std, self.cfg.method.noise_clip)

    def student_probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.perturb(images)).softmax(dim=1)

    def unsupervised_loss(self, batch, cache):
        images = batch["unlabeled"]["image"]
        with torch.no_grad():
            teacher_probs = self.teacher(self.perturb(images)).softmax(dim=1)
        return probability_mse(self.student_probs(images), teacher_probs)

    def teacher_decay(self) -> float:
        """The EMA decay of this step's teacher update (0: the teacher becomes a copy of the student)."""
        return self.cfg.method.ema_decay

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # The teacher follows the updated student within the step, before any end-of-step hook: a checkpoint
        # taken at the step's end (CheckpointOnStop) then holds this step's teacher. global_step is still this
        # step's index here (Lightning counts the step once this hook returns).
        ema_update(self.teacher, self.net, self.teacher_decay())
