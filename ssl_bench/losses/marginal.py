"""The marginal loss and the exclusion loss for partial annotations (Shi et al., Medical Image Analysis 2021; Fang &
Yan, IEEE TMI 2020), as docs/methods.md ("marginal") defines them.

Pure functions on tensors. Shapes: ``logits`` (B, C, *spatial), one softmax output per class, background included;
``label`` (B, 1, *spatial) integers in 0..C-1, where a removed organ is already background (ssl_bench/data/partial.py);
``annotated`` (B, C - 1) bool flags of the foreground classes.

In a case whose annotated organs are A, a voxel labeled background is background or any organ not in A: its
probability is the marginal p_bg + Σ_{k∉A} p_k. The loss compares the merged classes {background ∪ removed organs}
and each organ of A with the partial label; with every organ annotated it is the ordinary loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_bench.losses.partial_label import DICE_SMOOTH, expand_flags


def merged_into_background(annotated: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B, C, 1, ..., 1) bool: the classes whose probability the background of each case holds (background and the
    removed organs), broadcastable over the spatial axes of an ``ndim``-dimensional logits tensor."""
    background = torch.ones_like(annotated[:, :1], dtype=torch.bool)
    return expand_flags(torch.cat([background, ~annotated.bool()], dim=1), ndim)


def marginal_log_probs(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) log-probabilities of the merged classes: channel 0 is log(p_bg + Σ_{k∉A} p_k), an annotated
    organ's channel its own log p_k, a removed organ's channel -inf (it is part of channel 0). A log-sum-exp of the
    log-softmax, so the marginal stays finite where every merged probability is tiny."""
    log_probs = logits.log_softmax(dim=1)
    merged = merged_into_background(annotated, logits.ndim)
    background = log_probs.masked_fill(~merged, -torch.inf).logsumexp(dim=1, keepdim=True)
    return torch.cat([background, log_probs[:, 1:].masked_fill(merged[:, 1:], -torch.inf)], dim=1)


def marginal_cross_entropy(logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of -log p'_y, p' the merged classes' probabilities and y the partial label: a background
    voxel's loss is on p_bg + Σ_{k∉A} p_k, an annotated organ's on its own probability."""
    return F.nll_loss(marginal_log_probs(logits, annotated), label[:, 0].long())


def marginal_dice_loss(logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per (case, merged class), on the merged probabilities against the partial label's one-hot map,
    averaged over each case's merged classes (background ∪ removed organs, and each annotated organ), smoothed as
    MONAI's DiceLoss (1e-5): with every organ annotated, MONAI's DiceLoss(softmax=True, to_onehot_y=True)."""
    probs = logits.softmax(dim=1)
    merged = merged_into_background(annotated, logits.ndim)
    probs = torch.cat([(probs * merged).sum(dim=1, keepdim=True), probs[:, 1:]], dim=1)
    targets = F.one_hot(label[:, 0].long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    axes = tuple(range(2, logits.ndim))
    dice = (2 * (probs * targets).sum(axes) + DICE_SMOOTH) / (probs.sum(axes) + targets.sum(axes) + DICE_SMOOTH)
    kept = (~merged.flatten(1)).to(dice.dtype)
    kept[:, 0] = 1.0
    return ((1 - dice) * kept).sum() / kept.sum()


def exclusion_dice(logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Shi et al.'s exclusion term in its Dice form: organs do not overlap, so every voxel labeled as an (annotated)
    organ is a negative for each removed organ k. Per (case, removed organ), 2·Σ e·p_k / (Σ e + Σ p_k), e the case's
    labeled organ voxels, averaged over those pairs (0 when every organ is annotated); minimised. No smoothing in
    the numerator, so that it is 0 where p_k has no mass on e, however empty both are."""
    probs = logits.softmax(dim=1)[:, 1:]
    others = (label > 0).to(probs.dtype)
    axes = tuple(range(2, logits.ndim))
    overlap = 2 * (probs * others).sum(axes) / (probs.sum(axes) + others.sum(axes) + DICE_SMOOTH)
    removed = (~annotated.bool()).to(overlap.dtype)
    return (overlap * removed).sum() / removed.sum().clamp_min(1.0)


def marginal_loss(logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor, with_dice: bool,
                  exclusion_weight: float = 0.0) -> torch.Tensor:
    """Marginal cross-entropy (+ marginal Dice) (+ exclusion_weight · exclusion Dice): with every organ annotated and
    no exclusion, MONAI's DiceCELoss(softmax=True, to_onehot_y=True), the protocol's supervised loss."""
    loss = marginal_cross_entropy(logits, label, annotated)
    if with_dice:
        loss = loss + marginal_dice_loss(logits, label, annotated)
    if exclusion_weight:
        loss = loss + exclusion_weight * exclusion_dice(logits, label, annotated)
    return loss
