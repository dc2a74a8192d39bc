"""supervised: DiceCE on the labeled cases only (docs/methods.md).

At the same fraction it is the lower bound for every semi-supervised method; at fraction 1.0 it is
the upper bound. Everything it does is the base module's default.
"""

from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.registry import register_method


@register_method("supervised")
class Supervised(SegmentationMethod):
    plot_colour = "#000000"
