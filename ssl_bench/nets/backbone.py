"""The one backbone every method uses: a MONAI U-Net (2D or 3D; or MONAI's BasicUNet, an FCN, ssl_bench/nets/fcn.py,
or UA-MT's V-Net, ssl_bench/nets/vnet.py) that also exposes its features.

Methods that need features (contrastive pretraining, feature-level consistency) call
``forward_features`` and get the encoder bottleneck and a decoder feature map besides the logits; the
features are captured with forward hooks, so the MONAI networks are used unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator, NamedTuple, Optional

import torch
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from ssl_bench.nets.fcn import FCN
from ssl_bench.nets.vnet import VNet


class Features(NamedTuple):
    logits: torch.Tensor
    bottleneck: torch.Tensor   # deepest encoder output (lowest resolution, most channels)
    decoder: torch.Tensor      # last decoder feature map before the output layer


def _scale_bottleneck(backbone: "Backbone", module, inputs, output):
    """The bottleneck's forward hook: its output times the backbone's pending scale, if any."""
    scale = backbone.bottleneck_scale
    return output if scale is None else output * scale


class Backbone(nn.Module):
    def __init__(self, net: nn.Module, bottleneck: str, decoder: str, spatial_dims: int, out_channels: int,
                 bottleneck_channels: int):
        super().__init__()
        self.net = net
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        # Submodule names, not references, so a deepcopy (an EMA teacher) stays independent.
        self.bottleneck_name = bottleneck
        self.decoder_name = decoder
        self.bottleneck_channels = bottleneck_channels
        # forward_scaled's perturbation, applied by a hook registered once: one that came and went with each call
        # would change the module's hooks between calls, which torch.compile guards on (a recompilation per step).
        # The hook holds this module through a partial, which a deepcopy rebinds to the copy.
        self.bottleneck_scale: Optional[torch.Tensor] = None
        net.get_submodule(bottleneck).register_forward_hook(partial(_scale_bottleneck, self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> Features:
        captured = {}
        # The bottleneck's output; the decoder layer's input (the features the output layer sees).
        handles = [
            self.net.get_submodule(self.bottleneck_name).register_forward_hook(
                lambda m, i, o: captured.__setitem__("bottleneck", o)),
            self.net.get_submodule(self.decoder_name).register_forward_hook(
                lambda m, i, o: captured.__setitem__("decoder", i[0])),
        ]
        try:
            logits = self.net(x)
        finally:
            for h in handles:
                h.remove()
        return Features(logits, captured["bottleneck"], captured["decoder"])

    def forward_scaled(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` with the bottleneck's output multiplied by ``scale`` (broadcastable to it, e.g.
        (B, bottleneck_channels, 1, ..., 1)) before the decoder sees it: encoder -> perturbation -> decoder
        (UniMatch's feature perturbation, a channel dropout), on every architecture.

        By a forward hook on the bottleneck module: MONAI's UNet nests its decoder around the bottleneck
        (SkipConnection blocks), so there is no decoder to call on its own; the hook scales exactly the tensor that
        the decoder's first block (and the innermost skip concatenation) receives. The call goes through this
        module, so hooks on it (pass counting, ``make perf``) see a normal forward."""
        self.bottleneck_scale = scale
        try:
            return self(x)
        finally:
            self.bottleneck_scale = None


def _unet_parts(unet: UNet):
    """MONAI's UNet nests Sequential(down, SkipConnection(inner), up); the innermost block is the bottleneck.

    The outermost up layer maps the concatenated skip + upsampled features to class logits: its input is
    the last decoder feature map.
    """
    name, block = "model", unet.model
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        name, block = f"{name}.1.submodule", block[1].submodule
    return name, "model.2"


def build_backbone(model_cfg, spatial_dims: int, in_channels: int, out_channels: int) -> Backbone:
    """The shared network factory; ``model_cfg`` is the ``model`` section of the config."""
    if model_cfg.arch == "unet":
        net = UNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            channels=tuple(model_cfg.channels), strides=tuple(model_cfg.strides),
            num_res_units=model_cfg.num_res_units, norm=model_cfg.norm, dropout=model_cfg.dropout,
        )
        bottleneck, decoder = _unet_parts(net)
        return Backbone(net, bottleneck, decoder, spatial_dims=spatial_dims, out_channels=out_channels,
                        bottleneck_channels=model_cfg.channels[-1])
    if model_cfg.arch == "basic_unet":
        if len(model_cfg.channels) != 6:
            raise ValueError("model.channels for basic_unet needs 6 entries (MONAI BasicUNet features), "
                             f"got {len(model_cfg.channels)}")
        net = BasicUNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            features=tuple(model_cfg.channels), norm=model_cfg.norm, dropout=model_cfg.dropout,
        )
        return Backbone(net, "down_4", "final_conv", spatial_dims=spatial_dims, out_channels=out_channels,
                        bottleneck_channels=model_cfg.channels[4])
    if model_cfg.arch == "fcn":
        net = FCN(spatial_dims, in_channels, out_channels, channels=tuple(model_cfg.channels),
                  strides=tuple(model_cfg.strides), num_res_units=model_cfg.num_res_units, norm=model_cfg.norm,
                  dropout=model_cfg.dropout)
        return Backbone(net, f"encoder.{len(net.encoder) - 1}", "head", spatial_dims=spatial_dims,
                        out_channels=out_channels, bottleneck_channels=model_cfg.channels[-1])
    if model_cfg.arch == "vnet":
        net = VNet(spatial_dims, in_channels, out_channels, channels=tuple(model_cfg.channels),
                   dropout=model_cfg.dropout, norm=model_cfg.norm)
        return Backbone(net, "bottleneck", "out_conv", spatial_dims=spatial_dims, out_channels=out_channels,
                        bottleneck_channels=model_cfg.channels[-1])
    raise ValueError(f"unknown model.arch '{model_cfg.arch}' (known: unet, basic_unet, fcn, vnet)")


# The layers that draw a dropout mask when in train mode (MONAI's blocks use nn.Dropout, the V-Net Dropout2d/3d).
DROPOUT_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@contextmanager
def dropout_sampling(net: nn.Module, seed: Optional[int] = None) -> Iterator[nn.Module]:
    """``net`` in eval mode except its dropout layers, which keep drawing masks: each pass is one MC-dropout sample
    (Gal & Ghahramani 2016) while norms use their inference statistics. Every module's mode is restored after. With
    ``seed``, the masks come from torch's generators seeded by it in a fork (torch.random.fork_rng): the passes are
    reproducible and the generators outside (the training's dropout) are left where they were."""
    device = next(net.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        modes = [(module, module.training) for module in net.modules()]
        net.eval()
        for module in net.modules():
            if isinstance(module, DROPOUT_LAYERS):
                module.train()
        try:
            yield net
        finally:
            for module, training in modes:
                module.train(training)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
