"""The V-Net of the semi-supervised left-atrium papers (UA-MT, Yu et al., MICCAI 2019: yulequan/UA-MT
code/networks/vnet.py, which SASSNet, DTC, MC-Net, SS-Net, BCP and AD-MT keep), from MONAI's convolution blocks.

Each resolution level is a stack of 3x3x3 convolution + norm + ReLU (1, 2, 3, 3, 3 of them from the top level
down, the decoder mirroring the encoder); a 2x2x2 stride-2 convolution goes down a level, a 2x2x2 stride-2
transposed convolution up, and the skip features are added (not concatenated). Channel dropout (Dropout3d, UA-MT's
``has_dropout``: p 0.5) acts on the bottleneck's output and on the last decoder features before the 1x1x1 output
convolution. ``channels`` gives the features of each level (UA-MT: 16, 32, 64, 128, 256).

Differences from MONAI's own VNet (Milletari et al. 2016), which is why it is not used: that network has 5x5x5
convolutions in residual blocks with PReLU and a fixed 16-channel input block; UA-MT's has plain 3x3x3 blocks.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

# Convolutions per level, top level first (UA-MT's block_one .. block_five: n_stages 1, 2, 3, 3, 3).
UAMT_STAGES = (1, 2, 3, 3, 3)


def _stack(spatial_dims: int, in_channels: int, out_channels: int, n: int, norm: str) -> nn.Sequential:
    return nn.Sequential(*[Convolution(spatial_dims, in_channels if i == 0 else out_channels, out_channels,
                                       kernel_size=3, act="RELU", norm=norm) for i in range(n)])


class VNet(nn.Module):
    """UA-MT's V-Net with ``len(channels)`` levels (module docstring); the input's sides must be multiples of
    2^(levels - 1)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
                 dropout: float, norm: str = "batch"):
        super().__init__()
        channels = tuple(channels)
        if not 2 <= len(channels) <= len(UAMT_STAGES):
            raise ValueError(f"model.channels for vnet needs 2 to {len(UAMT_STAGES)} levels, got {len(channels)}")
        stages = UAMT_STAGES[:len(channels)]
        self.encoder = nn.ModuleList(_stack(spatial_dims, in_channels if i == 0 else c, c, n, norm)
                                     for i, (c, n) in enumerate(zip(channels[:-1], stages)))
        self.down = nn.ModuleList(Convolution(spatial_dims, c, c_next, strides=2, kernel_size=2, padding=0,
                                              act="RELU", norm=norm)
                                  for c, c_next in zip(channels[:-1], channels[1:]))
        self.bottleneck = _stack(spatial_dims, channels[-1], channels[-1], stages[-1], norm)
        self.up = nn.ModuleList(Convolution(spatial_dims, c_next, c, strides=2, kernel_size=2, padding=0,
                                            act="RELU", norm=norm, is_transposed=True, output_padding=0)
                                for c, c_next in reversed(list(zip(channels[:-1], channels[1:]))))
        self.decoder = nn.ModuleList(_stack(spatial_dims, c, c, n, norm)
                                     for c, n in reversed(list(zip(channels[:-1], stages))))
        self.dropout = (nn.Dropout3d if spatial_dims == 3 else nn.Dropout2d)(dropout)
        self.out_conv = (nn.Conv3d if spatial_dims == 3 else nn.Conv2d)(channels[0], out_channels, kernel_size=1)
        self.divisor = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"vnet input of spatial shape {tuple(x.shape[2:])}: each side must be a multiple of "
                             f"{self.divisor} (2 to the number of downsamplings)")
        skips = []
        for block, down in zip(self.encoder, self.down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.dropout(self.bottleneck(x))
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(up(x) + skip)
        return self.out_conv(self.dropout(x))
