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
    teacher_tensors = chain(teacher.parameters(), teacher.buffers())
    student_tensors = chain(student.parameters(), student.buffers())
    for mine, theirs in zip(teacher_tensors, student_tensors, strict=True):
        if mine.is_floating_point():
            mine.lerp_(theirs, 1.0 - decay)  # mine + (1 - decay)(theirs - mine)
        else:
            mine.copy_(theirs)
