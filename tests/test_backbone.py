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
@pytest.mark.parametrize("arch, channels", [("unet", [4, 8, 16]), ("basic_unet", [4, 4, 8, 8, 16, 4])])
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
    assert not torch.allclose(net.forward_features(x).bottleneck, twin.forward_features(x).bottleneck)
    # forward_features leaves no hooks behind
    assert not any(m._forward_hooks for m in net.modules())


def test_dropout_makes_passes_stochastic_in_train_mode():
    net = build_backbone(_cfg(dropout=0.3), 3, 1, 2).train()
    x = torch.randn(1, 1, 16, 16, 16)
    assert not torch.allclose(net(x), net(x))
    net.eval()
    assert torch.allclose(net(x), net(x))


def test_unknown_architecture_and_bad_basic_unet_channels():
    with pytest.raises(ValueError, match="unknown model.arch"):
        build_backbone(_cfg(arch="vnet"), 3, 1, 2)
    with pytest.raises(ValueError, match="6 entries"):
        build_backbone(_cfg(arch="basic_unet"), 3, 1, 2)
    assert count_parameters(build_backbone(_cfg(), 3, 1, 2)) > 0
