"""The fully convolutional discriminator of adversarial segmentation (Hung et al. 2018), in 2D or 3D.

Input: a probability map (B, C, *spatial), optionally concatenated with the image; output: one logit per
voxel, (B, 1, *spatial), of "this map is ground truth". Hung et al.'s architecture: 4x4 convolutions of
stride 2 with leaky ReLUs, a classifier convolution, and upsampling back to the input size. Our classifier
is a 3x3 convolution of stride 1 (Hung et al.: 4x4, stride 2) so that small 3D patches (e.g. 16³, 1³ after
four halvings) still keep a spatial map to classify.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Hung et al. 2018 (after DCGAN, Radford et al. 2016): 4x4 kernels, stride 2, padding 1, leaky ReLU slope 0.2.
DOWN_KERNEL, DOWN_STRIDE, DOWN_PADDING = 4, 2, 1
LEAKY_SLOPE = 0.2
CLASSIFIER_KERNEL = 3


class Discriminator(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int]):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        layers, previous = [], in_channels
        for width in channels:
            layers += [conv(previous, width, DOWN_KERNEL, DOWN_STRIDE, DOWN_PADDING), nn.LeakyReLU(LEAKY_SLOPE)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.classifier = conv(previous, 1, CLASSIFIER_KERNEL, padding=CLASSIFIER_KERNEL // 2)
        self.upsampling = {2: "bilinear", 3: "trilinear"}[spatial_dims]
        self.min_side = DOWN_STRIDE ** len(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[2:]) < self.min_side:
            raise ValueError(f"the discriminator halves its input {self.min_side.bit_length() - 1} times: every "
                             f"spatial side must be >= {self.min_side}, got {list(x.shape[2:])} "
                             "(use fewer method.discriminator_channels)")
        logits = self.classifier(self.features(x))
        return F.interpolate(logits, size=x.shape[2:], mode=self.upsampling, align_corners=False)
