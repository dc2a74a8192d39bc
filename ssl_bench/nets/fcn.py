"""The FCN option of the shared backbone (``model.arch=fcn``): a fully convolutional network in the manner of
Long et al. 2015 (FCN-8s), in 2D or 3D.

A strided encoder, then FCN's decoder: from the coarsest map up, a 1x1 convolution to the next finer map's
channels, an upsampling by interpolation, and a *sum* with that finer encoder map (FCN's skip fusion), then a 1x1
convolution to class logits at full resolution. No concatenation and no convolutional decoder blocks: that is
what sets it apart from the U-Net options. The encoder is the U-Net option's down path, from MONAI's blocks
(residual units of ``num_res_units`` subunits, or plain convolutions for 0, with its norm and dropout), so the
two options differ in their decoder only. Long et al. learn the 2x upsamplings as deconvolutions initialised
to bilinear interpolation; here the interpolation is fixed and the 1x1 convolution before it is learned.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from monai.networks.layers.factories import Conv
from torch import nn


def _encoder_block(spatial_dims: int, in_channels: int, out_channels: int, stride: int, num_res_units: int,
                   norm: str, dropout: float) -> nn.Module:
    if num_res_units > 0:
        return ResidualUnit(spatial_dims, in_channels, out_channels, strides=stride, subunits=num_res_units,
                            norm=norm, dropout=dropout)
    return Convolution(spatial_dims, in_channels, out_channels, strides=stride, norm=norm, dropout=dropout)


class FCN(nn.Module):
    """Logits at the input's resolution; every input side must be a multiple of the product of ``strides``.
    Submodules ``encoder.<last>`` (the bottleneck) and ``head`` (its input is the last decoder map) are what
    ssl_bench.nets.backbone.Backbone exposes as features."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int, norm: str, dropout: float):
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ValueError(f"fcn needs one stride fewer than channels, got {len(strides)} and {len(channels)}")
        block = lambda c_in, c_out, stride: _encoder_block(spatial_dims, c_in, c_out, stride, num_res_units, norm,
                                                           dropout)
        conv = Conv[Conv.CONV, spatial_dims]
        self.stem = block(in_channels, channels[0], 1)
        self.encoder = nn.ModuleList(block(channels[i], channels[i + 1], strides[i]) for i in range(len(strides)))
        self.lateral = nn.ModuleList(conv(channels[i + 1], channels[i], kernel_size=1) for i in range(len(strides)))
        self.upsample = nn.ModuleList(
            UpSample(spatial_dims, scale_factor=s, mode="nontrainable", interp_mode="linear", align_corners=False)
            for s in strides)
        self.head = conv(channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [self.stem(x)]
        for down in self.encoder:
            maps.append(down(maps[-1]))
        y = maps[-1]
        for level in reversed(range(len(self.encoder))):
            y = self.upsample[level](self.lateral[level](y)) + maps[level]
        return self.head(y)
