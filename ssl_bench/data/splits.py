"""Labeled / unlabeled split of a training pool, exactly as METHODS.md ("The protocol") says."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List


@dataclass(frozen=True)
class PoolSplit:
    labeled: List[str]
    unlabeled: List[str]


def labeled_count(fraction: float, pool_size: int) -> int:
    """ceil(fraction x pool), at least one case. The tiny epsilon keeps 0.1 x 180 at 18, not 19."""
    return max(1, math.ceil(fraction * pool_size - 1e-9))


def split_pool(pool: List[str], fraction: float, draw: int) -> PoolSplit:
    """The first ceil(fraction x pool) cases of a permutation of the pool seeded by ``draw``.

    The permutation depends only on the draw and the pool's case ids (sorted first, so manifest order
    does not matter), which makes the labeled sets nested across fractions: 5% ⊂ 10% ⊂ 20%.
    """
    if not isinstance(fraction, (int, float)) or not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction!r}")
    if draw < 0:
        raise ValueError(f"draw must be a non-negative integer, got {draw!r}")
    if not pool:
        raise ValueError("the training pool is empty: every case is in test or validation")
    if len(set(pool)) != len(pool):
        raise ValueError("the training pool lists a case more than once")
    order = sorted(pool)
    random.Random(draw).shuffle(order)
    n = labeled_count(fraction, len(order))
    return PoolSplit(labeled=order[:n], unlabeled=order[n:])
