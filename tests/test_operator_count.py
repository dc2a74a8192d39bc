"""Operator counting (ssl_bench/tools/operator_count.py): what make perf's ops columns count."""

import torch
from torch import nn

from ssl_bench.tools.operator_count import OperatorCount
from ssl_bench.utils.ema import ema_update, frozen_copy


def test_views_and_allocations_are_not_counted_work_on_data_is():
    x = torch.arange(24.0)
    with OperatorCount() as views:
        x.view(4, 6).reshape(2, 12)[1:, ::2].t().detach()
        torch.empty(5)
    assert views.total == 0
    with OperatorCount() as copying:
        x.view(4, 6)[:, ::2].contiguous()  # strided: a copy
    assert dict(copying.by_name) == {"clone": 1}
    with OperatorCount() as work:
        y = (x * 2 + 1).sum()
    assert dict(work.by_name) == {"mul": 1, "add": 1, "sum": 1} and work.total == 3
    assert y.item() == 576.0


def test_backward_operators_are_counted_too():
    w = torch.ones(3, requires_grad=True)
    with OperatorCount() as forward_only:
        (w * 3).sum()
    with OperatorCount() as with_backward:
        (w * 3).sum().backward()
    assert forward_only.total == 2
    assert with_backward.total > forward_only.total
    assert torch.equal(w.grad, torch.full((3,), 3.0))


def test_the_ema_update_is_one_operator_per_kind_of_tensor_whatever_the_network():
    """The teacher's update costs a GPU step two launches (averaged floats, copied counters), not one per tensor."""
    for depth in (1, 4):
        student = nn.Sequential(*[m for _ in range(depth) for m in (nn.Conv3d(1, 1, 1), nn.BatchNorm3d(1))])
        teacher = frozen_copy(student)
        with OperatorCount() as update:
            ema_update(teacher, student, 0.99)
        assert dict(update.by_name) == {"_foreach_lerp_": 1, "_foreach_copy_": 1}
