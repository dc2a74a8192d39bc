"""Counting the tensor operators a piece of code runs: in a launch-bound training step (a small network on a GPU,
where the host queues kernels slower than the device runs them) time follows how many there are, and unlike a time,
the count is the same on every machine and every run, so it can be measured on a CPU."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operators that launch no kernel although they are not views: allocations and metadata-only reshapes.
_NO_KERNEL = frozenset({"empty", "empty_strided", "empty_like", "_unsafe_view"})


def launches_kernel(op: torch._ops.OpOverload) -> bool:
    """Whether ``op`` does work on the data: an aten operator that is neither a view (slicing, reshaping, detach:
    new metadata over the same storage) nor a mere allocation. Operators of other namespaces (the profiler's
    record_function markers) do nothing to tensors."""
    return op.namespace == "aten" and not op.is_view and op.overloadpacket.__name__ not in _NO_KERNEL


class OperatorCount(TorchDispatchMode):
    """``with OperatorCount() as count:`` counts the operators that do work on tensors (``launches_kernel``), forward
    and backward alike (autograd dispatches its backward operators too), by name in ``count.by_name``; the total is
    ``count.total``. Not for compiled code: a dispatch mode makes torch.compile fall back or recompile."""

    def __init__(self):
        super().__init__()
        self.by_name: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if launches_kernel(func):
            self.by_name[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
