"""Shared utilities of the consistency methods: ramp-up, EMA teacher, input noise, invertible transforms."""

import math
from functools import partial
from itertools import chain, combinations

import pytest
import torch
from torch import nn

from ssl_bench.utils.ema import ema_update, frozen_copy
from ssl_bench.utils.input_noise import add_clipped_noise
from ssl_bench.utils.ramps import learning_rate_factor, sigmoid_rampup
from ssl_bench.utils.transforms import FlipRotation, apply_each, random_flip_rotation


def test_sigmoid_rampup_values():
    rampup_steps = 40
    assert sigmoid_rampup(0, rampup_steps) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(rampup_steps / 2, rampup_steps) == pytest.approx(math.exp(-5 / 4))
    assert sigmoid_rampup(rampup_steps, rampup_steps) == 1.0
    assert sigmoid_rampup(3 * rampup_steps, rampup_steps) == 1.0
    assert sigmoid_rampup(5, 0) == 1.0


def _student_with_buffers() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 3, 3), nn.BatchNorm3d(3), nn.Dropout(0.2))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_ema_update_is_the_per_tensor_lerp_bit_for_bit(device):
    """ema_update batches its lerps into multi-tensor kernels: the weights must be what one lerp_ per tensor gives,
    so a teacher (and every record made with it) does not move."""
    torch.manual_seed(0)
    student = _student_with_buffers().to(device)
    teacher, reference = frozen_copy(student), frozen_copy(student)
    for _ in range(3):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        student(torch.randn(2, 1, 6, 6, 6, device=device))
        ema_update(teacher, student, 0.99)
        with torch.no_grad():
            for mine, theirs in zip([*reference.parameters(), *reference.buffers()],
                                    [*student.parameters(), *student.buffers()]):
                mine.lerp_(theirs, 1.0 - 0.99) if mine.is_floating_point() else mine.copy_(theirs)
    for (key, value), expected in zip(teacher.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), key


def test_ema_matches_the_closed_form_average_buffers_included():
    torch.manual_seed(0)
    student = _student_with_buffers()
    teacher = frozen_copy(student)
    decay, n = 0.9, 5
    initial = {k: v.clone() for k, v in teacher.state_dict().items()}
    history = []
    for _ in range(n):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        student(torch.randn(2, 1, 6, 6, 6))  # train mode: moves running statistics and the batch counter
        history.append({k: v.clone() for k, v in student.state_dict().items()})
        ema_update(teacher, student, decay)
    # θ'_n = α^n θ'_0 + Σ_{i=1..n} (1 - α) α^(n-i) θ_i; integer buffers are the student's last value.
    for key, value in teacher.state_dict().items():
        if value.is_floating_point():
            expected = decay ** n * initial[key] + sum(
                (1 - decay) * decay ** (n - i) * history[i - 1][key] for i in range(1, n + 1))
            torch.testing.assert_close(value, expected, msg=key)
        else:
            assert torch.equal(value, history[-1][key]), key
    assert any(not v.is_floating_point() for v in teacher.state_dict().values())  # the counter was covered


def test_frozen_copy_has_no_gradients_and_its_forwards_leave_running_statistics_alone():
    student = _student_with_buffers()
    teacher = frozen_copy(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    before = [b.clone() for b in teacher.buffers() if b.is_floating_point()]
    teacher.train()(torch.randn(2, 1, 6, 6, 6) + 3.0)
    after = [b for b in teacher.buffers() if b.is_floating_point()]
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_noise_is_clipped_and_independent():
    images = torch.zeros(100_000)
    first = add_clipped_noise(images, std=0.1, clip=0.2)
    second = add_clipped_noise(images, std=0.1, clip=0.2)
    assert first.abs().max() == pytest.approx(0.2)  # ~5% of N(0, 0.1²) lies beyond 0.2 and is clipped
    assert 0.08 < first.std() < 0.1
    assert not torch.equal(first, second)
    assert torch.equal(images, torch.zeros(100_000))  # the input is not modified


@pytest.mark.parametrize("spatial_shape", [(4, 5, 6), (4, 5)])
def test_every_flip_rotation_is_undone_exactly_by_its_inverse(spatial_shape):
    x = torch.randn(2, 3, *spatial_shape)
    axes = range(2, 2 + len(spatial_shape))
    flip_sets = chain.from_iterable(combinations(axes, r) for r in range(len(spatial_shape) + 1))
    for flip_dims in flip_sets:
        for plane in combinations(axes, 2):
            for turns in range(4):
                t = FlipRotation(tuple(flip_dims), plane, turns)
                assert torch.equal(t.inverse(t.apply(x)), x)
                assert torch.equal(t.apply(t.inverse(x)), x)


@pytest.mark.parametrize("spatial_shape", [(8, 12, 8), (8, 8, 8), (6, 10), (6, 6)])
def test_random_flip_rotations_keep_the_shape_and_cover_every_shape_keeping_rotation(spatial_shape):
    torch.manual_seed(0)
    x = torch.randn(1, 1, *spatial_shape)
    drawn = [random_flip_rotation(spatial_shape, flip_prob=0.5) for _ in range(300)]
    assert all(t.apply(x).shape == x.shape for t in drawn)
    for plane in combinations(range(2, 2 + len(spatial_shape)), 2):
        square = spatial_shape[plane[0] - 2] == spatial_shape[plane[1] - 2]
        turns = {t.quarter_turns for t in drawn if t.plane == plane}
        assert turns == ({0, 1, 2, 3} if square else {0, 2})
    assert {t.flip_dims for t in drawn} >= {(), tuple(range(2, 2 + len(spatial_shape)))}


def test_apply_each_transforms_each_sample_with_its_own_transform():
    x = torch.randn(2, 1, 4, 4)
    transforms = [FlipRotation((2,), (2, 3), 0), FlipRotation((), (2, 3), 1)]
    out = apply_each(transforms, x)
    assert torch.equal(out[0:1], torch.flip(x[0:1], (2,)))
    assert torch.equal(out[1:2], torch.rot90(x[1:2], 1, (2, 3)))


@pytest.mark.parametrize("schedule, halfway", [("poly", 0.5 ** 0.9), ("cosine", 0.5), ("constant", 1.0)])
def test_learning_rate_factor_warms_up_linearly_then_decays(schedule, halfway):
    factor = partial(learning_rate_factor, total_steps=110, warmup_steps=10, schedule=schedule, poly_power=0.9)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # (step + 1) / warmup
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(halfway)  # half of the 100 steps after warm-up
    assert factor(110) == pytest.approx(0.0 if schedule != "constant" else 1.0)


def test_learning_rate_warmup_is_capped_below_the_budget():
    # A 5-step run with 50 warm-up steps warms up over 4 steps instead of never reaching the base rate.
    assert learning_rate_factor(3, total_steps=5, warmup_steps=50, schedule="poly", poly_power=0.9) == pytest.approx(1.0)
