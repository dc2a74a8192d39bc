"""Pure functions of cps, unimatch and bcp: losses against hard pseudo-labels, box masks and mixing, the largest
connected component, strong intensity augmentation and feature dropout."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ssl_bench.data.stream import position_generator
from ssl_bench.losses.mixing import (bcp_outside_mask, bidirectional_copy_paste, box_mask, cutmix, cutmix_boxes,
                                     cutmix_partners, paste)
from ssl_bench.losses.pseudo_label import (confident_dice_ce, cross_pseudo_supervision, hard_pseudo_labels,
                                           largest_component_per_class, masked_dice_ce, source_dice_ce)
from ssl_bench.utils.strong_augment import (StrongIntensity, adjust_contrast, adjust_gamma, feature_dropout_scale,
                                            gaussian_blur, strong_intensity)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- losses ------------------------------------------------------------------------------------------------
def test_cross_pseudo_supervision_is_each_network_against_the_others_argmax_without_gradient_through_it():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 5, 5, requires_grad=True)
    b = torch.randn(2, 3, 5, 5, requires_grad=True)
    loss = cross_pseudo_supervision(a, b)
    expected = F.cross_entropy(a, b.argmax(1)) + F.cross_entropy(b, a.argmax(1))
    assert loss.item() == pytest.approx(expected.item())
    # The gradient on b comes only from CE(b, argmax a): the same as that term's alone.
    grad_b, = torch.autograd.grad(loss, b)
    only_b, = torch.autograd.grad(F.cross_entropy(b, a.argmax(1).detach()), b)
    torch.testing.assert_close(grad_b, only_b)


def test_hard_pseudo_labels_are_argmax_and_max_probability():
    logits = torch.tensor([[[[0.0, 3.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
    labels, confidence = hard_pseudo_labels(logits)
    assert labels.tolist() == [[[[1, 0]]]]
    torch.testing.assert_close(confidence, logits.softmax(1).amax(1, keepdim=True))


def test_masked_dice_ce_ignores_everything_outside_its_mask():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(3, (2, 1, 6, 6))
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    mask[..., :3] = True
    changed_logits, changed_target = logits.clone(), target.clone()
    changed_logits[..., 3:] = torch.randn(2, 3, 6, 3) * 10
    changed_target[..., 3:] = (target[..., 3:] + 1) % 3
    for by_mask in (True, False):
        assert masked_dice_ce(logits, target, mask, by_mask).item() == pytest.approx(
            masked_dice_ce(changed_logits, changed_target, mask, by_mask).item(), rel=1e-6)


def test_masked_dice_ce_with_a_full_mask_is_monai_dice_ce_and_normalises_as_asked():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(3, (2, 1, 4, 4))
    full = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    dice = DiceLoss(to_onehot_y=True, softmax=True)(logits, target)
    expected = F.cross_entropy(logits, target[:, 0]) + dice
    assert masked_dice_ce(logits, target, full, True).item() == pytest.approx(expected.item(), rel=1e-5)
    assert masked_dice_ce(logits, target, full, True, with_ce=False).item() == pytest.approx(dice.item(), rel=1e-5)
    half = torch.zeros_like(full)
    half[0] = True
    ce = F.cross_entropy(logits, target[:, 0], reduction="none")[0].sum()
    dice_half = masked_dice_ce(logits, target, half, True, with_ce=False)
    # CE normalised by the kept voxels (BCP's parts) or by all voxels (FixMatch's / UniMatch's masked mean).
    assert masked_dice_ce(logits, target, half, True).item() == pytest.approx((ce / 16 + dice_half).item(), rel=1e-5)
    assert masked_dice_ce(logits, target, half, False).item() == pytest.approx((ce / 32 + dice_half).item(), rel=1e-5)
    assert masked_dice_ce(logits, target, torch.zeros_like(full), True).item() == 0


def test_confident_loss_keeps_voxels_at_or_above_the_threshold():
    torch.manual_seed(0)
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(3, (1, 1, 4, 4))
    confidence = torch.full((1, 1, 4, 4), 0.5)
    confidence[..., 0, :] = 0.95
    expected = masked_dice_ce(logits, target, confidence >= 0.95, normalise_by_mask=False)
    assert confident_dice_ce(logits, target, confidence, 0.95).item() == pytest.approx(expected.item())
    assert confident_dice_ce(logits, target, confidence, 0.96).item() == 0


def test_source_parts_split_a_mixed_image_by_where_its_voxels_come_from():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(3, (2, 1, 4, 4))
    from_labeled = torch.rand(2, 1, 4, 4) < 0.5
    labeled, unlabeled = source_dice_ce(logits, target, from_labeled)
    assert labeled.item() == pytest.approx(masked_dice_ce(logits, target, from_labeled, True).item())
    assert unlabeled.item() == pytest.approx(masked_dice_ce(logits, target, ~from_labeled, True).item())


def test_largest_component_per_class_keeps_each_class_biggest_blob_in_2d_and_3d():
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    labels[0, 0, 0:3, 0:3] = 1   # class 1: 9 voxels
    labels[0, 0, 6:8, 6:8] = 1   # class 1: 4 voxels, dropped
    labels[0, 0, 0, 7] = 2       # class 2: a single component, kept
    labels[1, 0, 4, 4] = 1
    labels[1, 0, 5, 5] = 1       # diagonal neighbour: one component under full connectivity
    kept = largest_component_per_class(labels, num_classes=3)
    expected = labels.clone()
    expected[0, 0, 6:8, 6:8] = 0
    assert torch.equal(kept, expected)
    volume = torch.zeros(1, 1, 5, 5, 5, dtype=torch.long)
    volume[0, 0, :2, :2, :2] = 2
    volume[0, 0, 4, 4, 4] = 2
    kept = largest_component_per_class(volume, num_classes=3)
    assert kept.sum() == 8 * 2 and kept[0, 0, 4, 4, 4] == 0


# ---- boxes and mixing ---------------------------------------------------------------------------------------
def test_box_mask_marks_exactly_each_box():
    mask = box_mask([4, 5, 6], torch.tensor([[1, 0, 2], [0, 3, 0]]), torch.tensor([[2, 5, 1], [4, 2, 6]]))
    assert mask.shape == (2, 1, 4, 5, 6)
    expected = torch.zeros(2, 1, 4, 5, 6, dtype=torch.bool)
    expected[0, 0, 1:3, 0:5, 2:3] = True
    expected[1, 0, 0:4, 3:5, 0:6] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("shape", [[32, 32], [16, 24, 20]])
def test_cutmix_boxes_are_within_their_area_and_drawn_from_the_generator_alone(shape):
    boxes = cutmix_boxes(400, shape, _generator(), prob=0.5, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3))
    fractions = boxes.flatten(1).float().mean(1)
    drawn = fractions > 0
    assert 0.4 < drawn.float().mean() < 0.6
    assert fractions.max() <= 0.4 + 1e-6 and fractions[drawn].min() > 0
    assert torch.equal(boxes, cutmix_boxes(400, shape, _generator(), 0.5, (0.02, 0.4), (0.3, 1 / 0.3)))
    assert not torch.equal(boxes, cutmix_boxes(400, shape, _generator(1), 0.5, (0.02, 0.4), (0.3, 1 / 0.3)))
    assert not cutmix_boxes(5, shape, _generator(), prob=0.0, area=(0.02, 0.4), aspect=(0.3, 3)).any()


def test_cutmix_takes_each_box_from_another_image_of_the_batch():
    partner = cutmix_partners(5, _generator())
    assert (partner != torch.arange(5)).all()
    assert cutmix_partners(1, _generator()).tolist() == [0]
    images = torch.arange(5.0).reshape(5, 1, 1, 1).expand(5, 1, 4, 4)
    boxes = box_mask([4, 4], torch.zeros(5, 2, dtype=torch.long), torch.full((5, 2), 2))
    mixed = cutmix(images, partner, boxes)
    assert torch.equal(mixed[:, 0, 0, 0], partner.float()) and torch.equal(mixed[:, 0, 3, 3], torch.arange(5.0))


@pytest.mark.parametrize("shape", [[40, 56, 40], [24, 30]])
def test_bcp_mask_is_zero_on_a_box_of_two_thirds_of_every_side(shape):
    outside = bcp_outside_mask(6, shape, _generator(), box_fraction=2 / 3)
    inside = ~outside
    for b in range(6):
        for axis, side in enumerate(shape):
            other = tuple(d for d in range(len(shape)) if d != axis)
            assert inside[b, 0].any(dim=other).sum() == int(side * 2 / 3)
    assert math.isclose(inside.float().mean().item(), math.prod(int(s * 2 / 3) / s for s in shape), rel_tol=1e-6)
    assert torch.equal(outside, bcp_outside_mask(6, shape, _generator(), 2 / 3))


def test_bidirectional_copy_paste_mixes_images_and_targets_both_ways():
    labeled, labels = torch.full((4, 1, 3, 3), 1.0), torch.full((4, 1, 3, 3), 1)
    unlabeled, pseudo = torch.full((4, 1, 3, 3), 2.0), torch.full((4, 1, 3, 3), 2)
    outside = torch.ones(4, 1, 3, 3, dtype=torch.bool)
    outside[..., 1, 1] = False  # the box: the centre voxel
    images, targets, from_labeled = bidirectional_copy_paste(labeled, labels, unlabeled, pseudo, outside)
    # X_in = X_l ⊙ M + X_u ⊙ (1 - M): labeled around an unlabeled centre; X_out the other way round.
    assert images[:2, 0, 0, 0].tolist() == [1, 1] and images[:2, 0, 1, 1].tolist() == [2, 2]
    assert images[2:, 0, 0, 0].tolist() == [2, 2] and images[2:, 0, 1, 1].tolist() == [1, 1]
    assert torch.equal(targets, images.long())
    assert torch.equal(from_labeled, images == 1)
    assert torch.equal(paste(labeled, unlabeled, outside)[0], images[0])


# ---- strong augmentation --------------------------------------------------------------------------------------
INTENSITY = StrongIntensity(contrast_prob=0.8, contrast_range=0.5, gamma_prob=0.3, gamma_range=(0.7, 1.5),
                            blur_prob=0.5, blur_sigma=(0.1, 2.0), noise_prob=0.1, noise_std_max=0.1)
NOTHING = StrongIntensity(0.0, 0.5, 0.0, (0.7, 1.5), 0.0, (0.1, 2.0), 0.0, 0.1)


def test_strong_views_depend_on_the_stream_positions_alone():
    x = torch.randn(4, 1, 8, 8, 8)
    first = strong_intensity(x, INTENSITY, position_generator(0, "unimatch", torch.arange(4), x.device))
    torch.manual_seed(123)  # the global generator plays no part
    again = strong_intensity(x, INTENSITY, position_generator(0, "unimatch", torch.arange(4), x.device))
    other = strong_intensity(x, INTENSITY, position_generator(0, "unimatch", torch.arange(4, 8), x.device))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(strong_intensity(x, NOTHING, _generator()), x)


def test_contrast_gamma_and_blur_do_what_they_say():
    x = torch.randn(2, 1, 6, 6)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(adjust_contrast(x, torch.tensor([1.5, 0.5])),
                               mean + torch.tensor([1.5, 0.5]).view(2, 1, 1, 1) * (x - mean))
    gamma = adjust_gamma(x, torch.tensor([2.0, 0.5]))
    for b, g in enumerate([2.0, 0.5]):
        low, high = x[b].min(), x[b].max()
        torch.testing.assert_close(gamma[b], ((x[b] - low) / (high - low)) ** g * (high - low) + low)
    constant = torch.full((2, 1, 5, 5, 5), 3.0)
    torch.testing.assert_close(gaussian_blur(constant, torch.tensor([1.0, 2.0]), 2.0), constant)
    impulse = torch.zeros(2, 1, 25, 25)
    impulse[:, :, 12, 12] = 1
    blurred = gaussian_blur(impulse, torch.tensor([0.0, 1.5]), 2.0)
    torch.testing.assert_close(blurred[0], impulse[0])  # σ = 0: identity
    assert blurred[1].sum().item() == pytest.approx(1.0, rel=1e-5)
    one_axis = torch.exp(-0.5 * (torch.arange(-6.0, 7.0) / 1.5) ** 2)
    assert blurred[1, 0, 12, 12].item() == pytest.approx((1 / one_axis.sum() ** 2).item(), rel=1e-5)


def test_feature_dropout_drops_whole_channels_of_the_perturbed_samples_only():
    perturbed = torch.tensor([False, False, True, True])
    scale = feature_dropout_scale(4, 64, 3, 0.5, perturbed, _generator())
    assert scale.shape == (4, 64, 1, 1, 1)
    assert (scale[:2] == 1).all()
    assert ((scale[2:] == 0) | (scale[2:] == 2)).all()  # kept channels scaled by 1 / (1 - p)
    assert 0.3 < (scale[2:] == 0).float().mean() < 0.7
    assert torch.equal(scale, feature_dropout_scale(4, 64, 3, 0.5, perturbed, _generator()))
