"""Ramp-up schedules for unsupervised loss weights."""

from __future__ import annotations

import math


def sigmoid_rampup(step: float, rampup_steps: float) -> float:
    """exp(-5 (1 - min(t, T_r)/T_r)^2) (Laine & Aila 2017): 0.0067 at t=0, 1 from t=T_r on; 1 if T_r=0."""
    if rampup_steps <= 0:
        return 1.0
    phase = 1.0 - min(max(step, 0.0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * phase * phase)
