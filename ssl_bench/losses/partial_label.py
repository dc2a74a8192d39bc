"""SMILE's loss and SMILEr's relabeling (Petit et al. 2018), as docs/methods.md ("smile and smiler") defines them.

Pure functions on tensors. Shapes: ``logits`` (B, K, *spatial), one sigmoid output per organ (K = C - 1, no
background channel); ``label`` (B, 1, *spatial) integers in 0..K, where a removed organ is already
background; ``annotated`` (B, K) bool flags; ``pseudo_positive`` (B, K, *spatial) bool, SMILEr's relabeled
voxels (or None).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

# Numerator and denominator smoothing of the soft Dice, as MONAI's DiceLoss defaults (1e-5).
DICE_SMOOTH = 1e-5


def expand_flags(annotated: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B, K) -> (B, K, 1, ..., 1), broadcastable over the spatial axes."""
    return annotated.bool().reshape(*annotated.shape, *([1] * (ndim - 2)))


def organ_targets(label: torch.Tensor, n_organs: int) -> torch.Tensor:
    """(B, K, *spatial) bool: voxel is labeled as organ k (channel k - 1)."""
    organs = torch.arange(1, n_organs + 1, device=label.device).reshape(1, n_organs, *([1] * (label.ndim - 2)))
    return label == organs


def ambiguity_map(label: torch.Tensor, annotated: torch.Tensor, n_organs: int) -> torch.Tensor:
    """w_k per voxel, (B, K, *spatial) float in {0, 1}.

    Organ k annotated in the case: every voxel counts (1). Organ k not annotated: voxels labeled as another
    organ are certain negatives for k (1); every other voxel (background, which includes the removed organ
    itself) is ambiguous (0).
    """
    other_organ = (label > 0) & ~organ_targets(label, n_organs)
    return (expand_flags(annotated, label.ndim) | other_organ).float()


def smile_targets_and_weights(label: torch.Tensor, annotated: torch.Tensor, n_organs: int,
                              pseudo_positive: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y*, w): organ targets and the ambiguity map; SMILEr's relabeled voxels are positives that count."""
    targets = organ_targets(label, n_organs)
    weights = ambiguity_map(label, annotated, n_organs)
    if pseudo_positive is not None:
        # Relabeling applies to missing organs only, on ambiguous voxels (relabel_top_fraction's candidates).
        pseudo_positive = pseudo_positive & ~expand_flags(annotated, label.ndim)
        targets = targets | pseudo_positive
        weights = weights.masked_fill(pseudo_positive, 1.0)
    return targets.float(), weights


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·BCE(sigmoid(logits), targets) / Σ w: the mean BCE over the voxels that count (0 if none does).

    With every weight 1 it is plain mean BCE; a voxel with weight 0 contributes exactly zero gradient.
    """
    per_voxel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_voxel * weights).sum() / weights.sum().clamp_min(1.0)


def annotated_soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits), per (case, organ), averaged over the annotated pairs only (0 if none)."""
    probs = logits.sigmoid()
    axes = tuple(range(2, logits.ndim))
    intersection = (probs * targets).sum(axes)
    denominator = probs.sum(axes) + targets.sum(axes)
    dice = (2 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    pairs = annotated.to(dice.dtype)
    return ((1 - dice) * pairs).sum() / pairs.sum().clamp_min(1.0)


def smile_loss(logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor, dice_on_annotated: bool,
               pseudo_positive: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SMILE: ambiguity-weighted BCE (+ soft Dice on the annotated organs); SMILEr passes its relabeled voxels."""
    targets, weights = smile_targets_and_weights(label, annotated, logits.shape[1], pseudo_positive)
    loss = weighted_bce(logits, targets, weights)
    if dice_on_annotated:
        loss = loss + annotated_soft_dice_loss(logits, targets, annotated)
    return loss


def decode_sigmoid(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, K, ...) logits to a (B, ...) label map: organ k where sigmoid > threshold, overlaps resolved by the
    highest score, background (0) elsewhere."""
    probs = logits.sigmoid()
    best_score, best_organ = probs.max(dim=1)
    return torch.where(best_score > threshold, best_organ + 1, torch.zeros_like(best_organ))


def relabel_top_fraction(scores: torch.Tensor, candidates: torch.Tensor, gamma: float,
                         threshold: float = 0.5, rank_by: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SMILEr's relabeling of one organ in one case: bool mask, same shape as ``scores`` (probabilities).

    Among candidate voxels predicted positive (score > threshold), the round(γ·n) ranked highest by ``rank_by``
    (default: the scores themselves, Petit et al. 2018; the MC-dropout criterion passes minus the variance), n the
    number of predicted positives; none when nothing is predicted positive.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    positive = candidates.bool() & (scores > threshold)
    n_keep = math.floor(gamma * int(positive.sum()) + 0.5)
    selected = torch.zeros(positive.numel(), dtype=torch.bool, device=positive.device)
    if n_keep > 0:
        ranking = scores if rank_by is None else rank_by
        flat_ranking = torch.where(positive, ranking, torch.full_like(ranking, -math.inf)).flatten()
        selected[flat_ranking.topk(n_keep).indices] = True
    return selected.reshape(positive.shape)


def relabel_round_steps(total_steps: int, smile_phase_fraction: float, rounds: int) -> List[int]:
    """The steps SMILEr's relabeling rounds start at: plain SMILE for the first smile_phase_fraction of the budget,
    then ``rounds`` rounds evenly spaced over the rest."""
    start = math.floor(total_steps * smile_phase_fraction + 1e-9)  # the epsilon keeps 0.3 x 10 at 3, not 2
    return [start + (total_steps - start) * t // rounds for t in range(rounds)]


def relabel_missing_organs(scores: torch.Tensor, label: torch.Tensor, full_label: torch.Tensor, missing: Sequence[int],
                           gamma: float, threshold: float, ranking: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, List[int], List[int]]:
    """One case's round: for each missing organ k (0-based foreground index), relabel_top_fraction of its scores
    among the voxels labeled background. ``scores`` and ``ranking`` (K, *volume); ``label`` (the partial one) and
    ``full_label`` (the untouched one) (*volume). Returns the (K, *volume) bool pseudo-labels, and per organ the
    voxels relabeled and how many of them are that organ in ``full_label``."""
    relabeled = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    voxels, correct = [0] * scores.shape[0], [0] * scores.shape[0]
    for k in missing:
        relabeled[k] = relabel_top_fraction(scores[k], label == 0, gamma, threshold,
                                            None if ranking is None else ranking[k])
        voxels[k] = int(relabeled[k].sum())
        correct[k] = int((relabeled[k] & (full_label == k + 1)).sum())
    return relabeled, voxels, correct


def pseudo_labels_at(voxel_index: torch.Tensor, volumes: Sequence[Optional[torch.Tensor]],
                     n_organs: int) -> torch.Tensor:
    """(B, K, *patch) bool: SMILEr's pseudo-labels of each patch of a batch, looked up through ``voxel_index`` (B,
    *patch; each voxel's flat index in its volume plus one, 0 for padding) in its case's (K, voxels) volume of
    pseudo-labels; a case without any (None) gets none."""
    out = []
    for b, volume in enumerate(volumes):
        if volume is None:
            out.append(torch.zeros((n_organs, *voxel_index.shape[1:]), dtype=torch.bool, device=voxel_index.device))
        else:
            out.append(volume[:, (voxel_index[b] - 1).clamp_min(0)] & (voxel_index[b] > 0))
    return torch.stack(out)


def mc_dropout_scores(samples: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """From T MC-dropout sigmoid maps (T, ...) of the same input: the mean score and its variance over the passes
    per voxel, the model uncertainty of Gal & Ghahramani 2016 (the same shape, without T)."""
    mean = samples.mean(dim=0)
    return mean, (samples - mean).square().mean(dim=0)


def relabel_record(round_t: int, step: int, gamma: float, organs: Sequence[str], voxels: List[int],
                   correct: List[int]) -> Tuple[dict, Dict[str, float]]:
    """A relabeling round's entry of relabeling.json and its relabel/* metrics, from the voxels relabeled per organ
    and how many of them are the organ in the untouched label (precision NaN where none was relabeled)."""
    def precision(right: int, total: int) -> float:
        return right / total if total else math.nan

    record = {"round": round_t, "step": step, "gamma": gamma, "relabeled_voxels": sum(voxels),
              "precision": precision(sum(correct), sum(voxels)),
              "per_organ": {name: {"relabeled_voxels": v, "precision": precision(c, v)}
                            for name, v, c in zip(organs, voxels, correct)}}
    metrics = {"relabel/round": float(round_t), "relabel/gamma": gamma,
               "relabel/voxels": float(record["relabeled_voxels"]), "relabel/precision": record["precision"],
               **{f"relabel/{key}_{name}": float(v[key]) for name, v in record["per_organ"].items()
                  for key in ("relabeled_voxels", "precision")}}
    return record, metrics
