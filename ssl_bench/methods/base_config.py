"""The configs several methods share: an unsupervised term weighted by the λ(t) ramp, and consistency under input
noise. A method's own config lives in its file and subclasses one of these or ssl_bench.config.MethodConfig; its
``validate`` checks its base's fields first, then its own (docs/methods.md, "The shared ramp")."""

from __future__ import annotations

from dataclasses import dataclass

from ssl_bench.config import NON_NEGATIVE, UNIT_INTERVAL, MethodConfig


@dataclass
class SemiSupervisedConfig(MethodConfig):
    """Loss = L_sup + λ(t)·L_unsup with λ(t) = lambda_max·exp(-5(1 - t/T_r)^2) (Laine & Aila 2017)."""
    lambda_max: float = 0.1
    # T_r as a fraction of trainer.max_steps (docs/methods.md: 40% of the run).
    rampup_fraction: float = 0.4

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(NON_NEGATIVE, "lambda_max")
        self.check(UNIT_INTERVAL, "rampup_fraction")


@dataclass
class NoisyConsistencyConfig(SemiSupervisedConfig):
    """Consistency under additive input noise η ~ N(0, noise_std²) clipped to ±noise_clip per voxel.

    Defaults from Yu et al. 2019 (UA-MT code): std 0.1, clip 0.2, on z-scored images.
    """
    noise_std: float = 0.1
    noise_clip: float = 0.2

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(NON_NEGATIVE, "noise_std", "noise_clip")
