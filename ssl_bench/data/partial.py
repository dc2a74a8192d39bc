"""The partial-annotation protocol (docs/methods.md, "The protocol"; Petit et al. 2018): which organs of which
labeled case keep their annotation, and the transform that removes the others from the label map.

For each foreground class k independently, the labeled training cases are put in an order seeded by
(draw, k) and the first round(alpha · n) of that order lose their annotation of k. The order does not
depend on alpha, so the removed sets are nested as alpha grows; it depends only on the case ids (sorted
first), the draw and the class. Validation and test cases are never touched.

A removed organ becomes background in the label map, which is what a method that knows nothing of the
flags trains on (the naive baseline); the flags travel with the batch as ``annotated`` (B, K) for the
methods that use them (SMILE, SMILEr).
"""

from __future__ import annotations

import math
import random
from typing import Dict, List, Sequence

import torch


def partial_annotation_flags(case_ids: Sequence[str], n_foreground: int, alpha: float,
                             draw: int) -> Dict[str, List[bool]]:
    """{case id: [annotated?] per foreground class}: each class's annotation removed from round(alpha·n) cases."""
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if n_foreground < 1:
        raise ValueError(f"need at least one foreground class, got {n_foreground}")
    ids = sorted(case_ids)
    n_removed = math.floor(alpha * len(ids) + 0.5)  # round half up: alpha = 0.5 of 3 cases removes 2
    flags = {case_id: [True] * n_foreground for case_id in ids}
    for k in range(n_foreground):
        order = list(ids)
        # A string seed is hashed deterministically (unlike hash()), so the order is the same in every process.
        random.Random(f"partial-annotation/draw{draw}/class{k + 1}").shuffle(order)
        for case_id in order[:n_removed]:
            flags[case_id][k] = False
    return flags


class RemoveUnannotatedOrgans:
    """Dict transform: voxels of each organ whose flag in ``d["annotated"]`` is False become background.

    Deterministic, so CacheDataset caches its output. ``keep_full`` keeps the untouched map as
    ``label_full`` (for measuring relabeling precision); ``voxel_index`` adds, with the label's shape, the
    1-based flat index of each voxel in the volume (0 is left for padding), which follows the label through
    every crop, flip and slice, so a patch can look up per-volume data (SMILEr's pseudo-labels).
    """

    def __init__(self, keep_full: bool = False, voxel_index: bool = False):
        self.keep_full = keep_full
        self.voxel_index = voxel_index

    def __call__(self, d: dict) -> dict:
        d = dict(d)
        label = torch.as_tensor(d["label"])
        if self.keep_full:
            d["label_full"] = label.clone()
        removed = [k + 1 for k, annotated in enumerate(d["annotated"].tolist()) if not annotated]
        if removed:
            label = label.masked_fill(torch.isin(label, torch.tensor(removed, dtype=label.dtype)), 0)
        d["label"] = label
        if self.voxel_index:
            d["voxel_index"] = torch.arange(1, label.numel() + 1, dtype=torch.long).reshape(label.shape)
        return d
