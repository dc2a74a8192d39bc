"""Networks of multi-view co-training: one network per view, wrapped to answer in the common orientation.

``OrientedNetwork`` permutes its input into its view, runs its network and permutes the logits back, so the
training step, the comparison of views and sliding-window inference all work in the common orientation; a
window of the training patch is exactly a permuted training patch for every view network. The networks are
fully convolutional, so a non-cubic patch (nnU-Net's 40x56x40) is fine in every view as long as each side
is divisible by the U-Net's total stride, which the identity view needs already.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ssl_bench.utils.views import from_view, to_view


class OrientedNetwork(nn.Module):
    def __init__(self, net: nn.Module, permutation: Sequence[int]):
        super().__init__()
        self.net = net
        self.permutation = tuple(permutation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_view(self.net(to_view(x, self.permutation)), self.permutation)


class ViewEnsemble(nn.Module):
    """The views' mean softmax, returned as its log, so that argmax decodes it as it decodes logits; the log is
    clamped at the smallest positive float so that sliding-window averaging never meets -inf."""

    def __init__(self, views: Sequence[OrientedNetwork]):
        super().__init__()
        self.views = nn.ModuleList(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([view(x).softmax(dim=1) for view in self.views]).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
