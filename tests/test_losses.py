"""Consistency losses and UA-MT's uncertainty as pure functions."""

import math

import pytest
import torch

from ssl_bench.losses.consistency import predictive_entropy, probability_mse, uncertainty_threshold
from ssl_bench.utils.ramps import sigmoid_rampup


def _probs(*shape) -> torch.Tensor:
    return torch.randn(*shape).softmax(dim=1)


def test_probability_mse_is_the_mean_squared_difference():
    p, q = _probs(2, 3, 4, 4, 4), _probs(2, 3, 4, 4, 4)
    assert probability_mse(p, p) == 0
    assert probability_mse(p, q) == pytest.approx(((p - q) ** 2).mean().item())


def test_masked_mse_is_normalised_by_the_kept_voxels():
    torch.manual_seed(0)
    p, q = _probs(2, 3, 4, 4), _probs(2, 3, 4, 4)
    keep = torch.rand(2, 1, 4, 4) < 0.3
    kept_squares = ((p - q) ** 2).permute(0, 2, 3, 1)[keep[:, 0]]  # (kept voxels, C)
    assert probability_mse(p, q, keep) == pytest.approx(kept_squares.mean().item())
    assert probability_mse(p, q, torch.ones_like(keep)) == pytest.approx(probability_mse(p, q).item())


def test_masked_mse_with_no_kept_voxel_is_zero_with_finite_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = probability_mse(logits.softmax(dim=1), _probs(2, 3, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    loss.backward()
    assert loss == 0 and torch.isfinite(logits.grad).all()


def test_predictive_entropy_bounds():
    num_classes = 4
    uniform = torch.full((1, num_classes, 2, 2), 1 / num_classes)
    one_hot = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [2, 3]]]), num_classes).permute(0, 3, 1, 2).float()
    assert predictive_entropy(uniform).shape == (1, 1, 2, 2)
    torch.testing.assert_close(predictive_entropy(uniform), torch.full((1, 1, 2, 2), math.log(num_classes)))
    assert torch.equal(predictive_entropy(one_hot), torch.zeros(1, 1, 2, 2))


def test_uncertainty_threshold_ramps_from_three_quarters_to_all_of_ln_c():
    num_classes, rampup_steps = 4, 40

    def threshold(step):
        return uncertainty_threshold(sigmoid_rampup(step, rampup_steps), num_classes, start=0.75, end=1.0)

    assert threshold(0) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(num_classes))
    assert threshold(rampup_steps) == pytest.approx(math.log(num_classes))
    assert threshold(2 * rampup_steps) == pytest.approx(math.log(num_classes))
