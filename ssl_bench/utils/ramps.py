"""Schedules: ramp-up of unsupervised loss weights, and the learning-rate multiplier of the protocol."""

from __future__ import annotations

import math


def sigmoid_rampup(step: float, rampup_steps: float) -> float:
    """exp(-5 (1 - min(t, T_r)/T_r)^2) (Laine & Aila 2017): 0.0067 at t=0, 1 from t=T_r on; 1 if T_r=0."""
    if rampup_steps <= 0:
        return 1.0
    phase = 1.0 - min(max(step, 0.0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * phase * phase)


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, poly_power: float,
                         step_fraction: float = 1.0, step_gamma: float = 1.0) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up over ``warmup_steps`` (at most
    total_steps - 1), then poly ((1 - progress)^power, nnU-Net), cosine, constant, or step (x ``step_gamma`` after
    every round(step_fraction x total_steps) steps, UA-MT's lr x 0.1 every 2500 iterations) over the rest."""
    warmup = min(warmup_steps, total_steps - 1)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "poly":
        return (1.0 - progress) ** poly_power
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return step_gamma ** ((step - warmup) // max(1, round(step_fraction * total_steps)))
    return 1.0
