"""AD-MT's arithmetic (Zhao et al., ECCV 2024; the authors' code ZhenZHAO/AD-MT), as pure functions: which teacher a
step updates (the random periodic alternation), the teachers' entropy-weighted ensemble, the conflict-combating
choice of the student's target, the confidence-masked CE against it, and the CutMix boxes of Beta-distributed size.

Shapes: probabilities (B, C, *spatial); label, confidence and flag maps (B, 1, *spatial), as hard_pseudo_labels
gives them. Random draws come from the generator passed in, so a resumed run draws the same.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from ssl_bench.losses.mixing import box_mask


def alternation_ends(steps: int, longest: int, random_length: bool, seed: int) -> torch.Tensor:
    """The step after each period of the alternation, in order: period k (from 0) covers steps [ends[k - 1], ends[k])
    and is teacher k % 2's. A period lasts U{1, ..., longest} steps (``random_length``, the authors' AlternateUpdate
    with flag_random) or ``longest``; ``steps`` periods, so at least ``steps`` steps."""
    if random_length:
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, longest + 1, (steps,), generator=generator)
    else:
        lengths = torch.full((steps,), longest)
    return lengths.cumsum(0)


def teacher_of_step(ends: torch.Tensor, step: int) -> int:
    """The teacher (0 or 1) whose period holds ``step`` (alternation_ends)."""
    return int(torch.searchsorted(ends, torch.tensor(step), right=True)) % 2


def entropy_bits(probs: torch.Tensor) -> torch.Tensor:
    """Per voxel -Σ_c p_c log2(p_c + 1e-10), (B, 1, *spatial), as the authors' code."""
    return -(probs * torch.log2(probs + 1e-10)).sum(dim=1, keepdim=True)


def entropy_ensemble(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """w_1·p_1 + w_2·p_2 per voxel with (w_1, w_2) = softmax(-H_1, -H_2), H a teacher's entropy there: the more
    certain teacher weighs more (Zhao et al.'s entropy-based ensembling)."""
    weights = torch.softmax(-torch.stack([entropy_bits(first), entropy_bits(second)]), dim=0)
    return weights[0] * first + weights[1] * second


def combat_conflicts(labels: torch.Tensor, confidence: torch.Tensor, student_labels: torch.Tensor,
                     student_confidence: torch.Tensor, teachers_disagree: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The student's target and its confidence (the authors' get_compromise_pseudo_btw_tea_stu, pixel_confidence
    mode): the ensemble's, except where the teachers disagree and the student, on the weak view, labels the voxel
    otherwise and more confidently than the ensemble: there the student's own."""
    own = teachers_disagree & (student_labels != labels) & (student_confidence > confidence)
    return torch.where(own, student_labels, labels), torch.where(own, student_confidence, confidence)


def confident_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                            threshold: float) -> torch.Tensor:
    """CE of ``logits`` against ``labels``, averaged over the voxels whose confidence is >= ``threshold`` (the authors'
    CE with the others ignored); 0 where none is (theirs is then NaN)."""
    keep = (confidence >= threshold)[:, 0].to(logits.dtype)
    per_voxel = F.cross_entropy(logits, labels[:, 0].long(), reduction="none")
    return (per_voxel * keep).sum() / keep.sum().clamp_min(1)


def beta_cutmix_boxes(batch: int, spatial_shape: Sequence[int], generator: torch.Generator,
                      beta: int) -> torch.Tensor:
    """CutMix boxes as AD-MT's code draws them (mixaugs.rand_bbox / rand_bbox_3d), (B, 1, *spatial) bool: one λ ~
    Beta(beta, beta) for the batch (the beta-th smallest of 2·beta - 1 uniforms, which is so distributed), each box
    side int(side·sqrt(1 - λ)), centred on a uniform voxel from side/8 on, clipped to the patch."""
    device = generator.device
    lam = torch.rand(2 * beta - 1, generator=generator, device=device).sort().values[beta - 1]
    sides = torch.tensor(list(spatial_shape), device=device)
    cut = (sides * (1 - lam).sqrt()).long()
    low = sides // 8
    centres = low + (torch.rand((batch, len(sides)), generator=generator, device=device) * (sides - low)).long()
    starts = (centres - cut // 2).clamp_min(0)
    ends = torch.minimum(centres + cut // 2, sides)
    return box_mask(spatial_shape, starts, ends - starts)
