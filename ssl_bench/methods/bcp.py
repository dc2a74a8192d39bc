"""bcp: bidirectional copy-paste inside Mean Teacher (Bai et al., CVPR 2023), as docs/methods.md ("bcp") defines it.

M is 1 everywhere but a box of 2/3 of every patch side, placed at random (one per mixed image), where it is 0.
Stage 1, the first method.stage1_fraction of the run: supervised copy-paste between the two halves of the labeled
batch, a ⊙ M + b ⊙ (1 - M) with the labels mixed alike, DiceCE on each source's voxels (weights 1 and 1, as Bai
et al.'s pre-training). Stage 2: the EMA teacher's hard pseudo-labels Ŷ_u of the unlabeled images (the largest
connected component of each class), and, pairing each half of the labeled batch with a half of the unlabeled one,
X_in = X_l ⊙ M + X_u ⊙ (1 - M), X_out = X_u ⊙ M + X_l ⊙ (1 - M) with targets mixed alike; on each, DiceCE on the
voxels from the labeled image (the base's supervised term) + α · DiceCE on those from the unlabeled one (its
unsupervised term, weight α = 0.5, no ramp). method.unlabeled_stage=false keeps stage 1 for the whole run: the
control (experiments/sweeps/bcp_stage1_control.yaml).

The stage is a function of global_step alone. The teacher is the student's copy after every stage-1 optimizer
step, so at the switch it is the stage-1 student, and an EMA of the student after every stage-2 step; it is a
submodule in every checkpoint, so a run resumed anywhere, before, at or after the switch, continues what an
uninterrupted one does, and the hand-over cannot happen twice. Student and teacher are evaluated, the teacher
primary (during stage 1 and in the control they are the same network).

Forwards per step: stage 1, the student on L/2 mixed images; stage 2, the teacher on U images without gradients
and the student on the L/2 + U/2 mixed images (L = U, one call) with gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.config import BELOW_ONE, NON_NEGATIVE, OPEN_UNIT_INTERVAL, UNIT_INTERVAL, MethodConfig, need
from ssl_bench.losses.mixing import bcp_outside_mask, bidirectional_copy_paste, paste
from ssl_bench.losses.pseudo_label import hard_pseudo_labels, largest_component_per_class, source_dice_ce
from ssl_bench.methods.mean_teacher import MeanTeacher
from ssl_bench.registry import register_method


@dataclass
class BCPConfig(MethodConfig):
    """Bidirectional copy-paste inside Mean Teacher (Bai et al., CVPR 2023; DeepMed-Lab-ECNU/BCP code)."""
    # Stage 1 (copy-paste between labeled images) for this fraction of trainer.max_steps, then stage 2. Bai et al.
    # pre-train 10k of 40k iterations on ACDC (their LA script: 2k, then 15k).
    stage1_fraction: float = 0.25
    # false: stage 1 for the whole run, BCP's control (supervised copy-paste, no unlabeled image).
    unlabeled_stage: bool = True
    # EMA decay of the stage-2 teacher (Bai et al.'s code: 0.99).
    ema_decay: float = 0.99
    # α: weight of the voxels that come from an unlabeled image (Bai et al.: u_weight 0.5).
    unlabeled_weight: float = 0.5
    # Side of the pasted box as a fraction of each patch side (Bai et al.: mask_ratio 2/3).
    box_fraction: float = 2 / 3
    # Teacher pseudo-labels reduced to the largest connected component of each class (Bai et al.: nms=1).
    largest_component: bool = True

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(UNIT_INTERVAL, "stage1_fraction")
        self.check(BELOW_ONE, "ema_decay")
        self.check(NON_NEGATIVE, "unlabeled_weight")
        self.check(OPEN_UNIT_INTERVAL, "box_fraction")
        # Stage 1 mixes the two halves of the labeled batch; stage 2 pairs labeled with unlabeled images.
        d = cfg.data
        need(d.labeled_batch_size % 2 == 0, "data.labeled_batch_size",
             f"bcp pastes between the two halves of the labeled batch: must be even, got {d.labeled_batch_size}")
        if self.unlabeled_stage:
            need(d.unlabeled_batch_size == d.labeled_batch_size, "data.unlabeled_batch_size",
                 f"bcp pairs each labeled image with an unlabeled one: must equal data.labeled_batch_size "
                 f"({d.labeled_batch_size}), got {d.unlabeled_batch_size}")


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)  # MetaTensors trip over slicing of their per-sample metadata


@register_method("bcp")
class BidirectionalCopyPaste(MeanTeacher):
    """Mean Teacher's teacher and its update; BCP's own losses (none of Mean Teacher's noise or consistency)."""
    plot_colour = "#ffbb78"
    config_class = BCPConfig

    @staticmethod
    def unlabeled_stage_at(cfg, step: int) -> bool:
        m = cfg.method
        return m.unlabeled_stage and step >= round(m.stage1_fraction * cfg.trainer.max_steps)

    def in_unlabeled_stage(self) -> bool:
        return self.unlabeled_stage_at(self.cfg, self.global_step)

    @classmethod
    def perf_overrides(cls, cfg):
        # Stage 2 holds 1 - stage1_fraction of the budget (3/4 by default): timed from step 0 when it dominates.
        m = cfg.method
        return ["method.stage1_fraction=0"] if m.unlabeled_stage and m.stage1_fraction < 0.5 else []

    @classmethod
    def forward_passes(cls, cfg, step=0):
        labeled = cfg.data.labeled_batch_size
        if cls.unlabeled_stage_at(cfg, step):
            return {"teacher": [cfg.data.unlabeled_batch_size], "student": [labeled]}
        return {"student": [labeled // 2]}

    def box_masks(self, labeled: dict, count: int) -> torch.Tensor:
        spatial = labeled["image"].shape[2:]
        return bcp_outside_mask(count, spatial, self.stream_generator(labeled, "bcp_box"), self.cfg.method.box_fraction)

    def supervised_loss(self, labeled, cache):
        images, labels = _plain(labeled["image"]), _plain(labeled["label"]).long()
        if images.shape[0] < 2 or images.shape[0] % 2:
            # The config checks the global batch; under DDP each rank gets batch / world size.
            raise ValueError(f"bcp pastes between halves of the labeled batch, but a step got {images.shape[0]} "
                             "labeled images: make data.labeled_batch_size an even multiple of the number of devices")
        if self.in_unlabeled_stage():
            from_labeled, from_unlabeled = self.mixed_losses(labeled, cache["batch"]["unlabeled"])
            cache["unlabeled_part"] = from_unlabeled
            return from_labeled
        half = images.shape[0] // 2
        outside = self.box_masks(labeled, half)
        mixed = paste(images[:half], images[half:], outside)
        first, second = source_dice_ce(self.net(mixed), paste(labels[:half], labels[half:], outside), outside)
        return first + second

    def mixed_losses(self, labeled: dict, unlabeled: dict):
        """Stage 2's DiceCE on the voxels from labeled images and on those from unlabeled ones, each the mean
        over X_in and X_out."""
        images, labels = _plain(labeled["image"]), _plain(labeled["label"]).long()
        unlabeled_images = _plain(unlabeled["image"])
        with torch.no_grad():
            pseudo_labels, _ = hard_pseudo_labels(self.teacher(unlabeled_images))
            if self.cfg.method.largest_component:
                pseudo_labels = largest_component_per_class(pseudo_labels, self.num_classes)
        outside = self.box_masks(labeled, images.shape[0])
        mixed, targets, from_labeled = bidirectional_copy_paste(images, labels, unlabeled_images, pseudo_labels,
                                                                outside)
        pairs = images.shape[0] // 2
        parts = [source_dice_ce(*args) for args in zip(self.net(mixed).split(pairs), targets.split(pairs),
                                                       from_labeled.split(pairs))]
        return tuple(torch.stack(part).mean() for part in zip(*parts))

    def unsupervised_loss(self, batch, cache):
        return cache.get("unlabeled_part")

    def unsupervised_weight(self) -> float:
        return self.cfg.method.unlabeled_weight

    def teacher_decay(self) -> float:
        # Stage 1: the teacher is the student's copy, so that stage 2 starts it from the stage-1 student.
        return self.cfg.method.ema_decay if self.in_unlabeled_stage() else 0.0
