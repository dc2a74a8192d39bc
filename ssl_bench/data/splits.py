"""Labeled / unlabeled split of a training pool, exactly as docs/methods.md ("The protocol") says: by patient.

A case is one image; a patient (subject) may have several (ACDC: end-diastole and end-systole frames). The pool is
split by patient, so that both images of a patient are labeled or both unlabeled. Without patient ids every case is
its own patient, and the split is the per-case split the hippocampus records were made with.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

# How the labeled patients are chosen (data.labeled_selection).
SELECTIONS = ("draw", "first", "first_then_draw")


@dataclass(frozen=True)
class PoolSplit:
    labeled: List[str]
    unlabeled: List[str]
    # The patients of the labeled and unlabeled cases, labeled in the order they were chosen.
    labeled_patients: List[str] = field(default_factory=list)
    unlabeled_patients: List[str] = field(default_factory=list)


def labeled_count(fraction: float, pool_size: int) -> int:
    """ceil(fraction x pool), at least one. The tiny epsilon keeps 0.1 x 180 at 18, not 19."""
    return max(1, math.ceil(fraction * pool_size - 1e-9))


def patients_of(case_ids: List[str], patient_of: Optional[Mapping[str, str]] = None) -> Dict[str, List[str]]:
    """{patient: its cases}, patients in order of first appearance and cases in the given order; without
    ``patient_of`` every case is its own patient."""
    groups: Dict[str, List[str]] = {}
    for case_id in case_ids:
        groups.setdefault(patient_of[case_id] if patient_of else case_id, []).append(case_id)
    return groups


def split_pool(pool: List[str], fraction: Optional[float] = None, draw: int = 0, *, n_labeled: Optional[int] = None,
               patient_of: Optional[Mapping[str, str]] = None, selection: str = "draw") -> PoolSplit:
    """The cases of the first k patients of an order of the pool's patients; the rest are unlabeled.

    k is ceil(fraction x patients) or ``n_labeled`` (exactly one of them). The order is, for ``selection="draw"``, a
    permutation seeded by ``draw`` of the sorted patient ids (so it does not depend on manifest order), and for
    ``"first"`` the manifest's own order (an SSL4MIS import: its train list, whose first N patients are SSL4MIS's
    labeled set); ``"first_then_draw"`` is "first" at draw 0 and "draw" at later draws (a UA-MT import: the papers'
    labeled set, then seeded others). Either way the labeled sets of one draw are nested: 5% ⊂ 10% ⊂ 20%, 3 ⊂ 7 patients.
    """
    if (fraction is None) == (n_labeled is None):
        raise ValueError("give exactly one of a labeled fraction and a number of labeled patients")
    if fraction is not None and (not isinstance(fraction, (int, float)) or math.isnan(fraction)
                                 or not 0.0 < fraction <= 1.0):
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction!r}")
    if draw < 0:
        raise ValueError(f"draw must be a non-negative integer, got {draw!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"labeled selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if not pool:
        raise ValueError("the training pool is empty: every case is in test or validation")
    if len(set(pool)) != len(pool):
        raise ValueError("the training pool lists a case more than once")
    groups = patients_of(pool, patient_of)
    if selection == "draw" or (selection == "first_then_draw" and draw > 0):
        order = sorted(groups)
        random.Random(draw).shuffle(order)
    else:
        order = list(groups)
    if n_labeled is not None and not 1 <= n_labeled <= len(order):
        raise ValueError(f"{n_labeled} labeled patients asked for, but the training pool has {len(order)}")
    n = n_labeled if n_labeled is not None else labeled_count(fraction, len(order))
    cases = [sorted(groups[p]) for p in order]
    return PoolSplit(labeled=[c for group in cases[:n] for c in group],
                     unlabeled=[c for group in cases[n:] for c in group],
                     labeled_patients=order[:n], unlabeled_patients=order[n:])
