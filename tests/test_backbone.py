import copy

import pytest
import torch
from omegaconf import OmegaConf

from ssl_bench.nets.backbone import build_backbone, count_parameters


def _cfg(**kw):
    base = dict(arch="unet", channels=[4, 8, 16], strides=[2, 2], num_res_units=1, norm="instance", dropout=0.0)
    base.update(kw)
    return OmegaConf.create(base)


@pytest.mark.parametrize("dims, shape", [(3, (2, 1, 32, 48, 32)), (2, (3, 1, 32, 48))])
@pytest.mark.parametrize("arch, channels",
                         [("unet", [4, 8, 16]), ("basic_unet", [4, 4, 8, 8, 16, 4]), ("fcn", [4, 8, 16])])
def test_logits_and_features_shapes(dims, shape, arch, channels):
    net = build_backbone(_cfg(arch=arch, channels=channels), dims, in_channels=1, out_channels=3)
    x = torch.randn(*shape)
    logits = net(x)
    assert logits.shape == (shape[0], 3, *shape[2:])
    f = net.forward_features(x)
    assert torch.allclose(f.logits, logits)
    assert f.bottleneck.shape[0] == shape[0] and f.bottleneck.ndim == dims + 2
    # the bottleneck is the lowest resolution; the decoder map is at least as fine
    assert all(b < s for b, s in zip(f.bottleneck.shape[2:], shape[2:]))
    assert all(b <= d for b, d in zip(f.bottleneck.shape[2:], f.decoder.shape[2:]))


def test_features_of_a_copy_come_from_the_copy():
    net = build_backbone(_cfg(), 3, 1, 2)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    x = torch.randn(1, 1, 16, 16, 16)
    hooks = sum(len(m._forward_hooks) for m in net.modules())
    assert not torch.allclose(net.forward_features(x).bottleneck, twin.forward_features(x).bottleneck)
    # forward_features leaves no hooks behind
    assert sum(len(m._forward_hooks) for m in net.modules()) == hooks


def test_dropout_makes_passes_stochastic_in_train_mode():
    net = build_backbone(_cfg(dropout=0.3), 3, 1, 2).train()
    x = torch.randn(1, 1, 16, 16, 16)
    assert not torch.allclose(net(x), net(x))
    net.eval()
    assert torch.allclose(net(x), net(x))


def test_unknown_architecture_and_bad_basic_unet_channels():
    with pytest.raises(ValueError, match="unknown model.arch"):
        build_backbone(_cfg(arch="resnet"), 3, 1, 2)
    with pytest.raises(ValueError, match="6 entries"):
        build_backbone(_cfg(arch="basic_unet"), 3, 1, 2)
    assert count_parameters(build_backbone(_cfg(), 3, 1, 2)) > 0


@pytest.mark.parametrize("num_res_units", [0, 2])
def test_fcn_fuses_by_summing_an_upsampled_coarse_path_into_each_finer_map(num_res_units):
    """FCN's decoder: the bottleneck (1/4 resolution here) goes up through one 1x1 convolution and one
    interpolation per level and is added to the encoder map of that level; the head sees full resolution with the
    first level's channels, and the network has no decoder convolutions beyond the 1x1 ones."""
    net = build_backbone(_cfg(arch="fcn", num_res_units=num_res_units), 3, in_channels=1, out_channels=3).eval()
    x = torch.randn(2, 1, 16, 24, 16)
    f = net.forward_features(x)
    assert f.bottleneck.shape == (2, 16, 4, 6, 4)
    assert f.decoder.shape == (2, 4, 16, 24, 16)
    fcn = net.net
    with torch.no_grad():
        maps = [fcn.stem(x)]
        for down in fcn.encoder:
            maps.append(down(maps[-1]))
        y = fcn.upsample[1](fcn.lateral[1](maps[2])) + maps[1]
        y = fcn.upsample[0](fcn.lateral[0](y)) + maps[0]
    torch.testing.assert_close(f.decoder, y)
    torch.testing.assert_close(f.logits, fcn.head(y))
    kernels = {m.kernel_size for m in fcn.lateral.modules() if isinstance(m, torch.nn.Conv3d)}
    assert kernels == {(1, 1, 1)}
    assert count_parameters(net) < count_parameters(build_backbone(_cfg(num_res_units=num_res_units), 3, 1, 3))


@pytest.mark.parametrize("dims, shape", [(3, (2, 1, 32, 48, 32)), (2, (2, 1, 32, 48))])
@pytest.mark.parametrize("arch, channels",
                         [("unet", [4, 8, 16]), ("basic_unet", [4, 4, 8, 8, 16, 4]), ("fcn", [4, 8, 16])])
def test_forward_scaled_decodes_the_scaled_bottleneck(dims, shape, arch, channels):
    """UniMatch's feature perturbation: the decoder sees scale · bottleneck, the encoder is untouched."""
    net = build_backbone(_cfg(arch=arch, channels=channels), dims, in_channels=1, out_channels=3).eval()
    x = torch.randn(*shape)
    bottleneck = net.forward_features(x).bottleneck
    assert bottleneck.shape[1] == net.bottleneck_channels
    ones = torch.ones(shape[0], net.bottleneck_channels, *([1] * dims))
    torch.testing.assert_close(net.forward_scaled(x, ones), net(x))
    assert not torch.allclose(net.forward_scaled(x, 0 * ones), net(x))
    first_zeroed = ones.clone()
    first_zeroed[0] = 0
    torch.testing.assert_close(net.forward_scaled(x, first_zeroed)[1:], net(x)[1:])  # per sample
    assert net.bottleneck_scale is None  # nothing left behind for the next plain call
    # A copy (an EMA teacher) scales its own bottleneck, never the original's.
    twin = copy.deepcopy(net)
    torch.testing.assert_close(twin.forward_scaled(x, first_zeroed), net.forward_scaled(x, first_zeroed))
    twin.bottleneck_scale = 0 * ones
    torch.testing.assert_close(net(x), net.forward_scaled(x, ones))
    assert not torch.allclose(twin(x), net(x))
