import math

import numpy as np
import pytest
import torch

from ssl_bench.run.evaluation import case_metrics, case_row, summarize


def _vol(shape=(8, 8, 8)):
    return torch.zeros(shape, dtype=torch.long)


def test_dice_hand_computed_overlap():
    target, pred = _vol(), _vol()
    target[0:2, 0:2, 0:2] = 1          # 8 voxels
    pred[0:2, 0:2, 1:3] = 1            # 8 voxels, 4 shared -> 2*4/16
    target[5:7, 5:7, 5:7] = 2
    pred[5:7, 5:7, 5:7] = 2            # identical -> 1
    m = case_metrics(pred, target, num_classes=3, spacing=(1, 1, 1))
    assert m["dice"] == pytest.approx([0.5, 1.0])
    assert m["hd95"][1] == pytest.approx(0.0)
    assert m["hd95"][0] == pytest.approx(1.0)   # the shifted slab is 1 voxel away


def test_jaccard_and_asd_beside_dice_and_hd95():
    target, pred = _vol(), _vol()
    target[0:2, 0:2, 0:2] = 1
    pred[0:2, 0:2, 1:3] = 1            # Dice 0.5: Jaccard 4 / 12 = D / (2 - D)
    target[5:7, 5:7, 5:7] = 2
    pred[5:7, 5:7, 5:7] = 2
    m = case_metrics(pred, target, num_classes=3, spacing=(1, 1, 1))
    assert list(m) == ["dice", "jaccard", "hd95", "asd", "confusion"]
    assert m["jaccard"] == pytest.approx([1 / 3, 1.0])
    assert m["asd"][1] == pytest.approx(0.0)
    # the prediction's surface voxels: half lie on the ground truth's surface (0), half one voxel beyond it (1)
    assert m["asd"][0] == pytest.approx(0.5)
    twice = case_metrics(pred, target, num_classes=3, spacing=(2, 2, 2))
    assert twice["asd"][0] == pytest.approx(1.0) and twice["jaccard"] == m["jaccard"]
    missed = case_metrics(_vol(), target, num_classes=3, spacing=(1, 1, 1))
    assert missed["jaccard"] == [0.0, 0.0] and missed["asd"] == pytest.approx([math.sqrt(3 * 64)] * 2)
    row = case_row("c", m, ["a", "b"])
    assert row["jaccard_mean"] == pytest.approx(2 / 3) and row["asd_mean"] == pytest.approx(0.25)


def test_confusion_is_the_share_of_a_structure_given_to_another_structure():
    """Two adjacent structures merged into one (SMILE's failure on hippocampus): class 1 keeps its voxels and takes
    three quarters of class 2's; background errors are no confusion."""
    target, pred = _vol(), _vol()
    target[0:4, 0:4, 0:2] = 1            # 32 voxels
    target[0:4, 0:4, 2:4] = 2            # 32 voxels beside them
    pred[0:4, 0:4, 0:4] = 1              # both structures as class 1...
    pred[0:1, 0:4, 2:4] = 2              # ...but for a quarter of class 2's voxels
    pred[0:4, 0:4, 0:1] = 0              # half of class 1 missed into background: no confusion
    m = case_metrics(pred, target, num_classes=3, spacing=(1, 1, 1))
    assert m["confusion"] == pytest.approx([0.0, 0.75])
    absent = target.clone()
    absent[absent == 2] = 0              # class 2 absent from the ground truth: NaN, as Dice's rule
    assert math.isnan(case_metrics(pred, absent, num_classes=3, spacing=(1, 1, 1))["confusion"][1])
    # One foreground class (the left atrium) has nothing to confuse it with: no confusion column.
    assert "confusion" not in case_metrics((pred > 0).long(), (target > 0).long(), 2, (1, 1, 1))


def test_hd95_uses_spacing_in_mm():
    target, pred = _vol(), _vol()
    target[1, 1, 1] = 1
    pred[1, 1, 4] = 1                  # 3 voxels along the last axis
    m = case_metrics(pred, target, num_classes=2, spacing=(1.0, 1.0, 2.0))
    assert m["hd95"] == pytest.approx([6.0])
    m = case_metrics(pred, target, num_classes=2, spacing=(0.5, 0.5, 0.5))
    assert m["hd95"] == pytest.approx([1.5])


def test_empty_mask_rules():
    shape = (8, 8, 8)
    spacing = (1.0, 2.0, 1.0)
    diagonal = math.sqrt(8 ** 2 + 16 ** 2 + 8 ** 2)
    target, pred = _vol(shape), _vol(shape)
    # class 1 absent in both -> NaN (skipped); class 2 absent in GT but predicted -> Dice 0;
    # class 3 present in GT but missed -> Dice 0; both undefined HDs get the worst case, the diagonal.
    pred[0:2, 0:2, 0:2] = 2
    target[4:6, 4:6, 4:6] = 3
    m = case_metrics(pred, target, num_classes=4, spacing=spacing)
    assert math.isnan(m["dice"][0]) and math.isnan(m["hd95"][0])
    assert m["dice"][1] == 0.0 and m["dice"][2] == 0.0
    assert m["hd95"][1] == pytest.approx(diagonal) and m["hd95"][2] == pytest.approx(diagonal)


def test_dice_only_mode_skips_hd():
    target = _vol()
    target[0, 0, 0] = 1
    assert case_metrics(target, target, 2, (1, 1, 1), with_hd=False) == {"dice": [1.0]}


def test_shape_and_spacing_errors():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(_vol((4, 4, 4)), _vol((4, 4, 5)), 2, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(_vol(), _vol(), 2, (1, 1))


def test_rows_and_summary_nanmean_over_classes_then_cases():
    names = ["a", "b"]
    r1 = case_row("x", {"dice": [0.8, float("nan")], "hd95": [2.0, float("nan")]}, names)
    r2 = case_row("y", {"dice": [0.4, 0.6], "hd95": [4.0, 6.0]}, names)
    assert r1["dice_mean"] == pytest.approx(0.8) and r2["dice_mean"] == pytest.approx(0.5)
    s = summarize([r1, r2], names)
    assert s["dice_a"] == pytest.approx(0.6)
    assert s["dice_b"] == pytest.approx(0.6)           # NaN skipped
    assert s["dice_mean"] == pytest.approx((0.8 + 0.5) / 2)
    assert s["hd95_mean"] == pytest.approx((2.0 + 5.0) / 2)
    assert s["n_cases"] == 2
    assert np.isnan(summarize([case_row("z", {"dice": [float("nan")] * 2, "hd95": [float("nan")] * 2}, names)],
                              names)["dice_mean"])
