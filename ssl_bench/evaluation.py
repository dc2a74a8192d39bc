"""Per-case, per-class Dice and HD95 with the protocol's empty-mask rules (METHODS.md, nnU-Net).

- Dice: a class absent from both ground truth and prediction is NaN (skipped by nanmean); absent in
  the ground truth but predicted is 0 (MONAI's compute_dice would give 1 or NaN, so we set it here).
- HD95 in millimetres with the image spacing (MONAI's compute_hausdorff_distance, percentile 95).
  Both empty: NaN. Exactly one empty: the distance is undefined, so the worst possible value, the
  image diagonal in mm, is used (as the BraTS evaluation does), rather than silently dropping a miss.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot


def case_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int, spacing: Sequence[float],
                 percentile: float = 95.0, with_hd: bool = True) -> Dict[str, List[float]]:
    """Dice and HD for each foreground class of one case.

    ``pred`` and ``target`` are integer label maps of the same spatial shape (no channel axis).
    Returns ``{"dice": [...], "hd95": [...]}`` with one value per foreground class (1..num_classes-1);
    without ``with_hd`` (validation, where only Dice selects the checkpoint) just ``{"dice": [...]}``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D label map")
    p = one_hot(pred[None, None].long(), num_classes, dim=1)
    t = one_hot(target[None, None].long(), num_classes, dim=1)
    dice = compute_dice(p, t, include_background=False, ignore_empty=False)[0]
    p_present = p[0, 1:].flatten(1).any(dim=1)
    t_present = t[0, 1:].flatten(1).any(dim=1)
    both_empty = ~p_present & ~t_present
    dice = torch.where(both_empty, torch.full_like(dice, float("nan")), dice)
    if not with_hd:
        return {"dice": dice.tolist()}

    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing)))
    hd = torch.full((num_classes - 1,), float("nan"))
    both_present = p_present & t_present
    if both_present.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns about the empty classes we overwrite below
            hd = compute_hausdorff_distance(p, t, include_background=False, percentile=percentile,
                                            spacing=[float(s) for s in spacing])[0].float()
    hd = torch.where(both_present, hd, torch.full_like(hd, diagonal))
    hd = torch.where(both_empty, torch.full_like(hd, float("nan")), hd)
    return {"dice": dice.tolist(), "hd95": hd.tolist()}


def nanmean(values) -> float:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


def summarize(rows: List[dict], class_names: Sequence[str]) -> Dict[str, float]:
    """Mean over cases of the per-case values (each row has dice_<class>, hd95_<class>, *_mean).

    Per class: nanmean over cases. ``dice_mean``/``hd95_mean``: per case the nanmean over classes,
    then the nanmean over cases, as METHODS.md says.
    """
    out = {"n_cases": len(rows)}
    for metric in ("dice", "hd95"):
        for name in class_names:
            out[f"{metric}_{name}"] = nanmean(r[f"{metric}_{name}"] for r in rows)
        out[f"{metric}_mean"] = nanmean(r[f"{metric}_mean"] for r in rows)
    return out


def case_row(case_id: str, metrics: Dict[str, List[float]], class_names: Sequence[str]) -> dict:
    """One row of per_case.csv: the case id, each class's Dice and HD95, and their means over classes."""
    row = {"case_id": case_id}
    for metric in ("dice", "hd95"):
        for name, value in zip(class_names, metrics[metric]):
            row[f"{metric}_{name}"] = float(value)
        row[f"{metric}_mean"] = nanmean(metrics[metric])
    return row
