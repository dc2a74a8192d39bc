"""adversarial: the discriminator, the losses as pure functions, the step's bookkeeping, checkpoint and resume."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.config import ConfigError, load_config
from ssl_bench.losses.adversarial import (confidence_mask, discriminator_accuracy, discriminator_loss, fool_loss,
                                          masked_self_training_loss)
from ssl_bench.methods.adversarial import Adversarial
from ssl_bench.nets.discriminator import Discriminator
from ssl_bench.run.train import train
from conftest import TINY
from test_methods import CLASS_NAMES, build, make_batch

TINY_DISCRIMINATOR = "method.discriminator_channels=[4,8]"


@pytest.mark.parametrize("spatial_dims, shape", [(3, (16, 24, 16)), (2, (16, 24))])
@pytest.mark.parametrize("with_image", [False, True])
def test_discriminator_gives_one_logit_per_voxel(spatial_dims, shape, with_image):
    in_channels = len(CLASS_NAMES) + with_image
    d = Discriminator(spatial_dims, in_channels, [4, 8, 16, 32])
    out = d(torch.rand(2, in_channels, *shape))
    assert out.shape == (2, 1, *shape) and torch.isfinite(out).all()


def test_discriminator_names_a_too_small_input():
    with pytest.raises(ValueError, match="must be >= 16"):
        Discriminator(3, 4, [4, 8, 16, 32])(torch.rand(1, 4, 8, 16, 16))


def test_self_training_mask_is_empty_when_the_threshold_is_one():
    logits = torch.randn(2, 4, 8, 8)
    d_logits = torch.full((2, 1, 8, 8), 50.0)  # sigmoid rounds to exactly 1.0: still not > 1
    keep = confidence_mask(d_logits, threshold=1.0)
    assert not keep.any()
    assert masked_self_training_loss(logits, keep) == 0
    assert confidence_mask(d_logits, threshold=0.2).all()


def test_self_training_loss_is_the_ce_against_argmax_over_kept_voxels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    everywhere = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    plain = F.cross_entropy(logits, logits.argmax(dim=1))
    assert masked_self_training_loss(logits, everywhere).item() == pytest.approx(plain.item())
    keep = torch.rand(2, 1, 8, 8) < 0.3
    per_voxel = F.cross_entropy(logits, logits.argmax(dim=1), reduction="none")
    assert masked_self_training_loss(logits, keep).item() == pytest.approx(per_voxel[keep[:, 0]].mean().item())
    masked_self_training_loss(logits, keep).backward()  # the target carries no gradient, the prediction does
    assert logits.grad.abs().sum() > 0


def test_adversarial_and_discriminator_losses():
    undecided = torch.zeros(2, 1, 4, 4)
    assert fool_loss(undecided) == pytest.approx(math.log(2))
    assert discriminator_loss(undecided, undecided) == pytest.approx(math.log(2))
    sure = torch.full((2, 1, 4, 4), 30.0)
    assert discriminator_loss(-sure, sure) == pytest.approx(0.0, abs=1e-6)  # fakes called fake, reals real
    assert fool_loss(sure) == pytest.approx(0.0, abs=1e-6)
    assert discriminator_accuracy(sure, True) == 1 and discriminator_accuracy(sure, False) == 0


def test_self_training_starts_after_the_configured_fraction(monkeypatch):
    module = build("adversarial", TINY_DISCRIMINATOR, "trainer.max_steps=100", "method.semi_start_fraction=0.05",
                   "method.semi_threshold=0")
    for step, active in [(0, False), (4, False), (5, True), (50, True)]:
        monkeypatch.setattr(Adversarial, "global_step", property(lambda self, step=step: step))
        losses = module.losses(make_batch())
        assert (losses.self_training > 0) == active and losses.confident_fraction == 1.0


def test_config_ranges():
    with pytest.raises(ConfigError, match="method.semi_threshold"):
        load_config("adversarial", "synthetic", ["method.semi_threshold=1.5"])
    with pytest.raises(ConfigError, match="method.discriminator_betas"):
        load_config("adversarial", "synthetic", ["method.discriminator_betas=[0.9]"])


def _config(tmp_path, cache, *extra):
    return load_config("adversarial", "synthetic", [f"run.runs_dir={tmp_path}", f"data.cache_dir={cache}", *TINY,
                                                   TINY_DISCRIMINATOR, "data.fraction=0.5", *extra])


class Interrupted(RuntimeError):
    pass


def test_checkpoint_holds_both_networks_and_optimizers_and_resume_restores_them(tmp_path, synthetic_cache,
                                                                                monkeypatch):
    cfg = _config(tmp_path, synthetic_cache, "trainer.max_steps=6", "trainer.val_every_n_steps=3")

    def crash_at_step_four(self, batch, batch_idx):
        if self.global_step == 4:
            raise Interrupted
    monkeypatch.setattr(Adversarial, "on_train_batch_start", crash_at_step_four)
    with pytest.raises(Interrupted):
        train(cfg)
    run = tmp_path / "synthetic" / "adversarial" / "frac0.5" / "draw0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3  # global_step counts segmenter steps, one per batch
    assert len(checkpoint["optimizer_states"]) == 2 and len(checkpoint["lr_schedulers"]) == 2
    assert all(state["state"] for state in checkpoint["optimizer_states"])  # both have stepped
    saved_d = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("discriminator.")}
    assert saved_d and any(k.startswith("net.") for k in checkpoint["state_dict"])

    restored = {}

    def record_restored_state(self):
        restored["optimizers"] = [copy.deepcopy(opt.optimizer.state_dict()) for opt in self.optimizers()]
        restored["discriminator"] = {f"discriminator.{k}": v.clone() for k, v in self.discriminator.state_dict().items()}
        restored["step"] = self.global_step
    monkeypatch.undo()
    monkeypatch.setattr(Adversarial, "on_train_start", record_restored_state)
    metrics = train(cfg)
    assert restored["step"] == 3 and metrics["steps"] == 6 and metrics["resumed_from_step"] == 3
    for name, value in saved_d.items():
        torch.testing.assert_close(restored["discriminator"][name], value)
    for mine, saved in zip(restored["optimizers"], checkpoint["optimizer_states"], strict=True):
        assert mine["state"].keys() == saved["state"].keys()
        for index, state in saved["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(mine["state"][index][key], value)
    assert math.isfinite(json.loads((run / "metrics.json").read_text())["primary"]["dice_mean"])
