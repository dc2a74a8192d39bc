"""The marginal loss and the exclusion term (ssl_bench/losses/marginal.py; Shi et al. 2021) on hand-made tensors,
and the marginal method against supervised where nothing was removed."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from ssl_bench.config import load_config
from ssl_bench.losses.marginal import (exclusion_dice, marginal_cross_entropy, marginal_dice_loss,
                                       marginal_log_probs, marginal_loss)
from ssl_bench.registry import get_method
from conftest import TINY

CLASSES = 4  # background and three organs


def _random_case(seed=0, shape=(2, CLASSES, 5, 4, 3)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    label = torch.randint(CLASSES, (shape[0], 1, *shape[2:]), generator=g)
    return logits, label


def _remove(label, annotated):
    """The partial label: removed organs become background (as RemoveUnannotatedOrgans)."""
    label = label.clone()
    for b, flags in enumerate(annotated.tolist()):
        for k, kept in enumerate(flags, start=1):
            if not kept:
                label[b][label[b] == k] = 0
    return label


def test_with_every_organ_annotated_it_is_softmax_cross_entropy_and_monai_dice_ce():
    logits, label = _random_case()
    everything = torch.ones(2, CLASSES - 1, dtype=torch.bool)
    assert marginal_cross_entropy(logits, label, everything).item() == pytest.approx(
        F.cross_entropy(logits, label[:, 0]).item(), rel=1e-12)
    assert marginal_loss(logits, label, everything, with_dice=True).item() == pytest.approx(
        DiceCELoss(to_onehot_y=True, softmax=True)(logits, label).item(), rel=1e-9)
    assert exclusion_dice(logits, label, everything).item() == 0.0


def test_merged_background_probability_on_a_hand_computed_voxel():
    # One case, one voxel of background and one of organ 1; organ 2 removed, organs 1 and 3 annotated.
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.25, 0.05]], dtype=torch.float64)
    logits = probs.log().T.reshape(1, CLASSES, 2, 1, 1)
    label = torch.tensor([0, 1]).reshape(1, 1, 2, 1, 1)
    annotated = torch.tensor([[True, False, True]])
    log_probs = marginal_log_probs(logits, annotated)[0, :, :, 0, 0]
    assert log_probs[0].exp().tolist() == pytest.approx([0.6, 0.35])  # p_bg + p_organ2
    assert log_probs[1].exp().tolist() == pytest.approx([0.3, 0.6])  # organ 1 as itself
    assert torch.isneginf(log_probs[2]).all()  # organ 2 is part of background
    assert marginal_cross_entropy(logits, label, annotated).item() == pytest.approx(
        -(math.log(0.6) + math.log(0.6)) / 2)
    # Dice of merged background {0.6, 0.35} against {1, 0}, of organ 1 {0.3, 0.6} against {0, 1}, of organ 3
    # {0.1, 0.05} against nothing; organ 2 has no Dice of its own.
    def dice(p, t):
        return (2 * sum(a * b for a, b in zip(p, t)) + 1e-5) / (sum(p) + sum(t) + 1e-5)
    expected = 1 - (dice([0.6, 0.35], [1, 0]) + dice([0.3, 0.6], [0, 1]) + dice([0.1, 0.05], [0, 0])) / 3
    assert marginal_dice_loss(logits, label, annotated).item() == pytest.approx(expected)


def test_probability_moved_between_background_and_a_removed_organ_leaves_the_loss_unchanged():
    logits, full = _random_case(seed=1)
    annotated = torch.tensor([[True, False, True], [False, True, True]])
    label = _remove(full, annotated)
    probs = logits.softmax(dim=1)
    moved = probs.clone()
    for b, organ in ((0, 2), (1, 1)):  # each case's removed organ
        background = label[b, 0] == 0
        total = probs[b, 0] + probs[b, organ]
        share = torch.rand(total.shape, generator=torch.Generator().manual_seed(b), dtype=torch.float64)
        moved[b, 0] = torch.where(background, share * total, probs[b, 0])
        moved[b, organ] = torch.where(background, (1 - share) * total, probs[b, organ])
    other = moved.log()
    assert not torch.allclose(other.softmax(dim=1), probs)
    for loss in (lambda z: marginal_loss(z, label, annotated, with_dice=True),
                 lambda z: marginal_cross_entropy(z, label, annotated)):
        assert loss(other).item() == pytest.approx(loss(logits).item(), rel=1e-10)
    # The ordinary loss, which takes the removed organ for background, does change.
    naive = DiceCELoss(to_onehot_y=True, softmax=True)
    assert abs(naive(other, label).item() - naive(logits, label).item()) > 1e-3


def test_a_removed_organ_is_still_trained_where_another_organ_is_labeled():
    # A voxel labeled organ 1: raising the removed organ 2's probability there costs, as every other class.
    logits, _ = _random_case(seed=2, shape=(1, CLASSES, 1, 1, 1))
    label = torch.ones(1, 1, 1, 1, 1, dtype=torch.long)
    annotated = torch.tensor([[True, False, True]])
    logits.requires_grad_(True)
    marginal_cross_entropy(logits, label, annotated).backward()
    grad = logits.grad.flatten()
    assert grad[1] < 0 and (grad[[0, 2, 3]] > 0).all()  # the labeled organ up, everything else down


def test_gradients_match_finite_differences_and_stay_finite_with_removed_organs():
    logits, full = _random_case(seed=3, shape=(2, CLASSES, 3, 2, 2))
    annotated = torch.tensor([[True, False, False], [False, True, True]])
    label = _remove(full, annotated)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: marginal_loss(z, label, annotated, True, exclusion_weight=0.5),
                                    (logits,))
    # Very confident logits: the merged log-probability is a log-sum-exp, never log(0).
    big = (logits.detach() * 200).requires_grad_(True)
    loss = marginal_loss(big, label, annotated, with_dice=True, exclusion_weight=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()


def test_exclusion_is_the_dice_of_each_removed_organ_with_the_labeled_organs():
    # Organ 2 removed; voxel a labeled organ 1 (p_organ2 = 0.2), voxel b background (p_organ2 = 0.6).
    probs = torch.tensor([[0.2, 0.5, 0.2, 0.1], [0.2, 0.1, 0.6, 0.1]], dtype=torch.float64)
    logits = probs.log().T.reshape(1, CLASSES, 2, 1, 1)
    label = torch.tensor([1, 0]).reshape(1, 1, 2, 1, 1)
    annotated = torch.tensor([[True, False, True]])
    expected = 2 * 0.2 / (1 + 0.8 + 1e-5)  # the denominator smoothed as the Dice losses
    assert exclusion_dice(logits, label, annotated).item() == pytest.approx(expected)
    # Weighted into the loss only when asked.
    plain = marginal_loss(logits, label, annotated, with_dice=True)
    assert marginal_loss(logits, label, annotated, True, exclusion_weight=0.5).item() == pytest.approx(
        plain.item() + 0.5 * expected)


def _method_loss(name, batch, *overrides):
    torch.manual_seed(0)  # the same initial network for both methods
    cfg = load_config(name, "synthetic", [*TINY, "model.dropout=0", *overrides])
    return get_method(name)(cfg, ["background", "organ1", "organ2", "organ3"], ["case0"]).supervised_loss(batch, {})


def test_the_method_is_supervised_when_nothing_was_removed_and_differs_when_something_was():
    g = torch.Generator().manual_seed(4)
    batch = {"image": torch.randn(2, 1, 16, 16, 16, generator=g),
             "label": torch.randint(CLASSES, (2, 1, 16, 16, 16), generator=g),
             "annotated": torch.ones(2, CLASSES - 1, dtype=torch.bool)}
    supervised = _method_loss("supervised", batch).item()
    assert _method_loss("marginal", batch).item() == pytest.approx(supervised, rel=1e-6)
    assert _method_loss("marginal", batch, "method.exclusion=true").item() == pytest.approx(supervised, rel=1e-6)
    batch["annotated"][0, 1] = False
    batch["label"][0][batch["label"][0] == 2] = 0
    assert _method_loss("marginal", batch).item() != pytest.approx(_method_loss("supervised", batch).item(), rel=1e-3)
