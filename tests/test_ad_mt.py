"""ad_mt: its arithmetic against hand-computed values (ssl_bench/losses/alternate_teaching.py), the alternation of the
teachers' updates, modes and strong views, a resume in the middle of a period, and its control."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector

from ssl_bench.cli import main
from ssl_bench.config import PROJECT_ROOT
from ssl_bench.losses.alternate_teaching import (alternation_ends, beta_cutmix_boxes, combat_conflicts,
                                                 confident_cross_entropy, entropy_bits, entropy_ensemble,
                                                 teacher_of_step)
from ssl_bench.sweep import load_sweep
from test_methods import build, make_batch
from test_train_e2e import _args, _assert_same_final_weights, _killed_after_first_checkpoint, _run_dir


# ---- the arithmetic ---------------------------------------------------------------------------------------------
def test_fixed_periods_alternate_the_teachers_every_period():
    ends = alternation_ends(10, 3, random_length=False, seed=0)
    assert [teacher_of_step(ends, step) for step in range(10)] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1]


def test_random_periods_last_one_to_the_longest_and_are_the_seeds():
    ends = alternation_ends(500, 19, random_length=True, seed=3)
    lengths = torch.diff(ends, prepend=torch.tensor([0]))
    assert lengths.min() >= 1 and lengths.max() <= 19 and ends[-1] >= 500
    assert len(set(lengths.tolist())) > 10  # drawn, not fixed
    assert torch.equal(ends, alternation_ends(500, 19, random_length=True, seed=3))
    assert not torch.equal(ends, alternation_ends(500, 19, random_length=True, seed=4))
    teachers = [teacher_of_step(ends, step) for step in range(int(ends[3]))]
    assert teachers == [k % 2 for k in range(4) for _ in range(int(lengths[k]))]


def test_the_entropy_ensemble_weighs_each_voxel_by_the_teachers_certainty():
    first = torch.tensor([0.9, 0.1]).reshape(1, 2, 1)
    second = torch.tensor([0.5, 0.5]).reshape(1, 2, 1)
    h1 = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))  # 0.469 bits; the uniform teacher has 1 bit
    assert entropy_bits(first).item() == pytest.approx(h1, abs=1e-6)
    assert entropy_bits(second).item() == pytest.approx(1.0, abs=1e-6)
    w1 = math.exp(-h1) / (math.exp(-h1) + math.exp(-1.0))
    expected = w1 * torch.tensor([0.9, 0.1]) + (1 - w1) * torch.tensor([0.5, 0.5])
    torch.testing.assert_close(entropy_ensemble(first, second)[0, :, 0], expected)
    torch.testing.assert_close(entropy_ensemble(first, first), first)
    probs = torch.rand(2, 4, 5, 5).softmax(dim=1), torch.rand(2, 4, 5, 5).softmax(dim=1)
    torch.testing.assert_close(entropy_ensemble(*probs).sum(dim=1), torch.ones(2, 5, 5))


def test_the_student_keeps_its_own_label_only_where_the_teachers_conflict_and_it_is_surer():
    # Voxels: teachers agree; conflict, student surer and different; conflict, student less sure; conflict, student
    # surer but of the ensemble's label.
    as_map = lambda values, dtype=None: torch.tensor(values, dtype=dtype).reshape(1, 1, 4)  # noqa: E731
    labels, confidence = as_map([1, 1, 1, 1]), as_map([0.6, 0.6, 0.6, 0.6])
    student, student_confidence = as_map([2, 2, 2, 1]), as_map([0.9, 0.9, 0.5, 0.9])
    disagree = as_map([False, True, True, True], torch.bool)
    target, target_confidence = combat_conflicts(labels, confidence, student, student_confidence, disagree)
    assert target.flatten().tolist() == [1, 2, 1, 1]
    assert target_confidence.flatten().tolist() == pytest.approx([0.6, 0.9, 0.6, 0.6])


def test_the_confident_cross_entropy_is_the_mean_over_the_kept_voxels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(3, (2, 1, 4, 4))
    confidence = torch.rand(2, 1, 4, 4)
    ignored = torch.where(confidence >= 0.5, labels, torch.full_like(labels, -100))[:, 0]
    expected = F.cross_entropy(logits, ignored, ignore_index=-100)
    torch.testing.assert_close(confident_cross_entropy(logits, labels, confidence, 0.5), expected)
    none_kept = confident_cross_entropy(logits, labels, confidence, 2.0)
    none_kept.backward()
    assert none_kept.item() == 0 and torch.isfinite(logits.grad).all()


def test_beta_cutmix_boxes_share_one_lambda_and_stay_in_the_patch():
    generator = torch.Generator().manual_seed(0)
    lams = torch.stack([torch.rand(7, generator=generator).sort().values[3] for _ in range(4000)])
    assert lams.mean().item() == pytest.approx(0.5, abs=0.01)  # Beta(4, 4): mean 1/2, variance 1/36
    assert lams.var().item() == pytest.approx(1 / 36, abs=0.002)
    spatial = (16, 20, 12)
    boxes = beta_cutmix_boxes(6, spatial, torch.Generator().manual_seed(1), beta=4)
    assert boxes.shape == (6, 1, *spatial) and boxes.dtype == torch.bool
    lam = torch.rand(7, generator=torch.Generator().manual_seed(1)).sort().values[3]
    for box in boxes[:, 0]:
        for axis, side in enumerate(spatial):
            covered = box.any(dim=tuple(a for a in range(3) if a != axis)).nonzero().flatten()
            if len(covered):  # contiguous, at most the side's int(side·sqrt(1 - λ)), clipped to the patch
                assert covered.max() - covered.min() + 1 == len(covered)
                assert len(covered) <= int(side * math.sqrt(1 - lam))


# ---- the method ---------------------------------------------------------------------------------------------------
def _at_step(monkeypatch, module, step):
    monkeypatch.setattr(type(module), "global_step", property(lambda self: step))


class _NoOptimizer:
    def step(self, closure=None):
        return closure() if closure else None


@pytest.mark.parametrize("alternate", [True, False])
def test_only_the_periods_teacher_takes_the_ema_update_unless_the_control(alternate, monkeypatch):
    module = build("ad_mt", "method.alternate_every=2", "method.random_period=false", f"method.alternate={alternate}")
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(1.0)  # a student away from its teachers, so that an update shows
    updated = []
    for step in range(6):
        _at_step(monkeypatch, module, step)
        before = [parameters_to_vector(t.parameters()).clone() for t in (module.teacher1, module.teacher2)]
        module.optimizer_step(0, step, _NoOptimizer())
        after = [parameters_to_vector(t.parameters()) for t in (module.teacher1, module.teacher2)]
        updated.append([not torch.equal(b, a) for b, a in zip(before, after)])
    if alternate:
        assert updated == [[True, False]] * 2 + [[False, True]] * 2 + [[True, False]] * 2
    else:
        assert updated == [[True, True]] * 6
        assert torch.equal(parameters_to_vector(module.teacher1.parameters()),
                           parameters_to_vector(module.teacher2.parameters()))


@pytest.mark.parametrize("step, current", [(0, 0), (2, 1)])
def test_the_periods_teacher_labels_in_train_mode_the_other_in_eval_mode_and_the_view_follows(step, current,
                                                                                              monkeypatch):
    module = build("ad_mt", "method.alternate_every=2", "method.random_period=false", "method.confidence_threshold=0")
    _at_step(monkeypatch, module, step)
    modes, inputs = {}, []

    def record_mode(network, args, key):
        modes[key] = network.training

    for name in ("teacher1", "teacher2"):
        getattr(module, name).register_forward_pre_hook(lambda m, args, key=name: record_mode(m, args, key))
    module.net.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    batch = make_batch()
    loss = module.unsupervised_loss(batch, {})
    assert modes == {"teacher1": current == 0, "teacher2": current == 1}
    assert module.teacher1.training and module.teacher2.training  # put back
    assert torch.isfinite(loss) and loss > 0
    weak, strong = inputs
    assert torch.equal(weak, batch["unlabeled"]["image"])
    changed = strong != weak
    if current == 0:  # strong intensity: contrast or noise changes voxels throughout the images it touches
        assert changed.flatten(1).float().mean(dim=1).max() > 0.5
    else:  # CutMix: a box of another image's voxels, the rest untouched
        other = weak.flip(0)  # a batch of two: the partner is the other image
        assert torch.equal(strong[changed], other[changed]) and 0 < changed.float().mean() < 1


def _cli(root, cache, *extra):
    return _args(root, cache, "data.fraction=0.5", "trainer.max_steps=4", "trainer.val_every_n_steps=2",
                 "method.alternate_every=3", *extra, method="ad_mt")


def test_a_run_resumed_within_a_period_ends_as_the_uninterrupted_one(tmp_path, synthetic_cache, monkeypatch):
    """Killed after its step-2 checkpoint and started again, an ad_mt run ends with the weights of the run never
    stopped (student and both teachers), bit for bit: the alternation is a function of the seed and the step."""
    uninterrupted, resumed = tmp_path / "a", tmp_path / "b"
    assert main(_cli(uninterrupted, synthetic_cache)) == 0
    _killed_after_first_checkpoint(resumed, _cli(resumed, synthetic_cache), monkeypatch)
    assert main(_cli(resumed, synthetic_cache)) == 0
    metrics = json.loads((_run_dir(resumed, method="ad_mt") / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["primary"]["model"] == "student"
    assert set(metrics["results"]["last"]) == {"student", "teacher1", "teacher2"}
    _assert_same_final_weights(uninterrupted, resumed, "ad_mt")


def test_the_control_sweep_updates_both_teachers_at_every_step():
    cells = load_sweep(PROJECT_ROOT / "experiments" / "sweeps" / "ad_mt_control.yaml").cells
    assert cells and all(c.method == "ad_mt" and c.config().method.alternate is False for c in cells)
