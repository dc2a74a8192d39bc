"""Per-case, per-class Dice, Jaccard, HD95 and ASD with the protocol's empty-mask rules (docs/methods.md, "The
protocol"; nnU-Net): the four numbers the left-atrium papers report (UA-MT's test_LA.py, with medpy).

- Dice and Jaccard: a class absent from both ground truth and prediction is NaN (skipped by nanmean); absent in
  the ground truth but predicted is 0 (MONAI's compute_dice would give 1 or NaN, so we set it here).
- HD95 in millimetres with the image spacing (MONAI's compute_hausdorff_distance, percentile 95, both directions);
  ASD, the mean distance from the prediction's surface to the ground truth's (MONAI's
  compute_average_surface_distance, not symmetric, as medpy's asd that the papers call). Both empty: NaN. Exactly
  one empty: the distance is undefined, so the worst possible value, the image diagonal in mm, is used (as the
  BraTS evaluation does), rather than silently dropping a miss.
- Confusion, where there are several foreground classes: the share of a class's ground-truth voxels that the
  prediction gives to another foreground class (NaN where the class is absent from the ground truth). Adjacent
  structures trained from partial annotations can merge into one (SMILE's two sigmoid channels on hippocampus,
  results/README.md, "Partially annotated organs"): Dice drops for any error, confusion only for that one.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou
from monai.networks.utils import one_hot

# What validation scores (model selection) and what a test scores, each one value per foreground class; a test of
# several foreground classes scores their confusion too (scored_metrics).
VALIDATION_METRICS = ("dice",)
TEST_METRICS = ("dice", "jaccard", "hd95", "asd")
STRUCTURE_METRICS = ("confusion",)


def scored_metrics(n_foreground: int) -> tuple:
    """The metrics a test scores with ``n_foreground`` foreground classes, in case_metrics' order."""
    return TEST_METRICS + (STRUCTURE_METRICS if n_foreground > 1 else ())


def case_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int, spacing: Sequence[float],
                 percentile: float = 95.0, with_hd: bool = True) -> Dict[str, List[float]]:
    """scored_metrics(num_classes - 1) for each foreground class of one case.

    ``pred`` and ``target`` are integer label maps of the same spatial shape (no channel axis).
    Returns ``{"dice": [...], "jaccard": [...], "hd95": [...], "asd": [...]}`` (and ``"confusion"`` with several
    foreground classes) with one value per foreground class (1..num_classes-1); without ``with_hd`` (validation,
    where only Dice selects the checkpoint) just ``{"dice": [...]}``.
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
    nan = float("nan")
    dice = torch.where(both_empty, torch.full_like(dice, nan), dice)
    if not with_hd:
        return {"dice": dice.tolist()}
    jaccard = compute_iou(p, t, include_background=False, ignore_empty=False)[0]
    jaccard = torch.where(both_empty, torch.full_like(jaccard, nan), jaccard)

    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing)))
    hd = asd = torch.full((num_classes - 1,), nan)
    both_present = p_present & t_present
    if both_present.any():
        mm = [float(s) for s in spacing]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns about the empty classes we overwrite below
            hd = compute_hausdorff_distance(p, t, include_background=False, percentile=percentile, spacing=mm)[0]
            asd = compute_average_surface_distance(p, t, include_background=False, symmetric=False, spacing=mm)[0]

    def distance(d: torch.Tensor) -> List[float]:
        d = torch.where(both_present, d.float(), torch.full_like(d.float(), diagonal))
        return torch.where(both_empty, torch.full_like(d, nan), d).tolist()
    out = {"dice": dice.tolist(), "jaccard": jaccard.tolist(), "hd95": distance(hd), "asd": distance(asd)}
    if "confusion" in scored_metrics(num_classes - 1):
        out["confusion"] = confusion(pred, target, num_classes)
    return out


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> List[float]:
    """Per foreground class, the share of its ground-truth voxels predicted as another foreground class; NaN where
    the class is absent from the ground truth."""
    other_foreground = pred > 0
    shares = []
    for k in range(1, num_classes):
        truth = target == k
        n = int(truth.sum())
        shares.append(float((truth & other_foreground & (pred != k)).sum()) / n if n else float("nan"))
    return shares


def window_overlap(roi: Sequence[int], stride: Sequence[int]) -> List[float]:
    """The per-axis overlap fractions that make MONAI's sliding window step ``stride`` voxels over windows of ``roi``
    (it steps int(roi x (1 - overlap))): a hair below (roi - stride) / roi, so that rounding cannot take a voxel
    off the stride."""
    return [max(0.0, (r - s - 1e-6) / r) for r, s in zip(roi, stride)]


def nanmean(values) -> float:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


def summarize(rows: List[dict], class_names: Sequence[str]) -> Dict[str, float]:
    """Mean over cases of the per-case values (each row has dice_<class>, hd95_<class>, *_mean, and jaccard / asd /
    confusion where it was scored with them).

    Per class: nanmean over cases. ``dice_mean``/``hd95_mean``: per case the nanmean over classes,
    then the nanmean over cases, as docs/methods.md ("The protocol") says.
    """
    out = {"n_cases": len(rows)}
    for metric in (m for m in scored_metrics(len(class_names)) if rows and f"{m}_mean" in rows[0]):
        for name in class_names:
            out[f"{metric}_{name}"] = nanmean(r[f"{metric}_{name}"] for r in rows)
        out[f"{metric}_mean"] = nanmean(r[f"{metric}_mean"] for r in rows)
    return out


def case_row(case_id: str, metrics: Dict[str, List[float]], class_names: Sequence[str]) -> dict:
    """One row of per_case.csv: the case id, each class's value of each metric in ``metrics``, and their means over
    classes."""
    row = {"case_id": case_id}
    for metric in metrics:
        for name, value in zip(class_names, metrics[metric]):
            row[f"{metric}_{name}"] = float(value)
        row[f"{metric}_mean"] = nanmean(metrics[metric])
    return row
