"""co_training: views and their inverses, the ensemble, the uncertainty-weighted pseudo-labels, the config."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.config import ConfigError, load_config
from ssl_bench.losses.co_training import leave_one_out_pseudo_labels, mc_mean_and_confidence, soft_cross_entropy
from ssl_bench.nets.multiview import OrientedNetwork, ViewEnsemble
from ssl_bench.utils.views import from_view, permuted_shape, to_view, view_permutations
from test_methods import CLASS_NAMES, build


@pytest.mark.parametrize("dims", [2, 3])
def test_views_are_distinct_and_each_inverse_is_exact(dims):
    permutations = view_permutations(dims, dims)
    assert len(set(permutations)) == dims and permutations[0] == tuple(range(dims))
    x = torch.randn(2, 3, *[5 + i for i in range(dims)])  # unequal sides: a wrong inverse cannot hide
    for p in permutations:
        viewed = to_view(x, p)
        assert list(viewed.shape[2:]) == permuted_shape(x.shape[2:], p)
        assert torch.equal(from_view(viewed, p), x) and torch.equal(to_view(from_view(x, p), p), x)
    if dims == 2:
        assert torch.equal(to_view(x, permutations[1]), x.transpose(2, 3))


def test_view_networks_answer_in_the_common_orientation_on_a_non_cubic_patch():
    module = build("co_training")  # TINY U-Net: total stride 4
    x = torch.randn(1, 1, 16, 24, 20)
    for name, view in module.view_networks().items():
        assert view(x).shape == (1, len(CLASS_NAMES), 16, 24, 20), name
    assert module.predict_logits(module.net, torch.randn(1, 1, 20, 28, 20)).shape == (1, len(CLASS_NAMES), 20, 28, 20)


def test_ensemble_of_identical_views_equals_one_view():
    torch.manual_seed(0)
    net = nn.Conv3d(1, len(CLASS_NAMES), kernel_size=3, padding=1)
    one_view = OrientedNetwork(net, (0, 1, 2))
    x = torch.randn(2, 1, 6, 7, 8)
    torch.testing.assert_close(ViewEnsemble([one_view, one_view])(x), F.log_softmax(net(x), dim=1))
    # A network that commutes with axis permutations (per voxel) predicts the same in every view.
    per_voxel = nn.Conv3d(1, len(CLASS_NAMES), kernel_size=1)
    views = [OrientedNetwork(per_voxel, p) for p in view_permutations(3, 3)]
    torch.testing.assert_close(ViewEnsemble(views)(x), F.log_softmax(per_voxel(x), dim=1))


def test_confidence_is_the_inverse_predictive_variance():
    samples = torch.randn(4, 2, 3, 5, 5).softmax(dim=2)
    mean, confidence = mc_mean_and_confidence(samples, epsilon=1e-6)
    torch.testing.assert_close(mean, samples.mean(dim=0))
    variance = ((samples - mean) ** 2).mean(dim=0).sum(dim=1, keepdim=True)
    torch.testing.assert_close(confidence, 1 / (variance + 1e-6))
    _, agreeing = mc_mean_and_confidence(samples[:1].expand(4, -1, -1, -1, -1), epsilon=1e-6)
    torch.testing.assert_close(agreeing, torch.full_like(agreeing, 1e6))


def test_pseudo_label_is_the_confidence_weighted_average_of_the_other_views():
    means = torch.randn(3, 2, 4, 5, 5).softmax(dim=2)
    equal = torch.ones(3, 2, 1, 5, 5)
    targets = leave_one_out_pseudo_labels(means, equal)
    torch.testing.assert_close(targets[0], (means[1] + means[2]) / 2)
    torch.testing.assert_close(targets[2], (means[0] + means[1]) / 2)
    weights = torch.rand(3, 2, 1, 5, 5) + 0.1
    expected = (weights[1] * means[1] + weights[2] * means[2]) / (weights[1] + weights[2])
    torch.testing.assert_close(leave_one_out_pseudo_labels(means, weights)[0], expected)
    sure_view_two = torch.tensor([1.0, 1.0, 1e6]).view(3, 1, 1, 1, 1).expand(3, 2, 1, 5, 5)
    torch.testing.assert_close(leave_one_out_pseudo_labels(means, sure_view_two)[0], means[2], atol=1e-5, rtol=0)


def test_soft_cross_entropy_is_the_cross_entropy_for_one_hot_targets():
    logits = torch.randn(2, 4, 5, 5)
    labels = torch.randint(4, (2, 5, 5))
    one_hot = F.one_hot(labels, 4).movedim(-1, 1).float()
    assert soft_cross_entropy(logits, one_hot) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_mc_dropout_needs_dropout_and_views_fit_the_dimensions():
    with pytest.raises(ConfigError, match="model.dropout.*MC dropout"):
        load_config("co_training", "synthetic", ["model.dropout=0"])
    assert load_config("co_training", "synthetic", ["model.dropout=0", "method.mc_passes=1"]).method.mc_passes == 1
    with pytest.raises(ConfigError, match="method.views"):
        load_config("co_training", "synthetic", ["data.spatial_dims=2", "data.patch_size=[32,32]", "method.views=3"])
    assert len(build("co_training", "method.views=2").view_networks()) == 2
