"""The exponential moving average teacher of Mean Teacher (Tarvainen & Valpola 2017) and its variants."""

from __future__ import annotations

import copy
from itertools import chain

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


def frozen_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` for an EMA teacher: no gradients (so no optimizer state), and norm layers whose
    running statistics move only through ``ema_update``, never through the teacher's own forwards.

    In train mode such a norm layer still normalises with batch statistics, as the student's does.
    """
    teacher = copy.deepcopy(net).requires_grad_(False)
    for module in teacher.modules():
        if isinstance(module, _NormBase):
            module.momentum = 0.0  # running = (1 - momentum)·running + momentum·batch: unchanged
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """θ' ← decay·θ' + (1 - decay)·θ for every parameter and floating-point buffer (norm running statistics);
    other buffers (batch counters) are copied, since an average of counts means nothing.

    ``teacher`` must be a copy of ``student`` (same tensors in the same order).
    """
    averaged, copied = ([], []), ([], [])
    teacher_tensors = chain(teacher.parameters(), teacher.buffers())
    student_tensors = chain(student.parameters(), student.buffers())
    for mine, theirs in zip(teacher_tensors, student_tensors, strict=True):
        kind = averaged if mine.is_floating_point() else copied
        kind[0].append(mine)
        kind[1].append(theirs)
    # One multi-tensor kernel per kind instead of one launch per tensor (what a GPU step waits on); the same
    # lerp, element for element: mine + (1 - decay)(theirs - mine).
    if averaged[0]:
        torch._foreach_lerp_(averaged[0], averaged[1], 1.0 - decay)
    if copied[0]:
        torch._foreach_copy_(copied[0], copied[1])
