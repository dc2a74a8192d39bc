"""unimatch: strong views drawn from the stream positions, CutMix targets, the feature stream, the FixMatch setting."""

import pytest
import torch

from ssl_bench.config import PROJECT_ROOT, ConfigError, load_config
from ssl_bench.losses.pseudo_label import confident_dice_ce
from ssl_bench.sweep import load_sweep
from test_methods import BATCH_SIZE, build, make_batch

FIXMATCH = ["method.strong_views=1", "method.feature_perturbation=false"]


def _views(module, batch, labels=None, confidence=None):
    unlabeled = batch["unlabeled"]
    weak = unlabeled["image"]
    labels = torch.zeros(weak.shape, dtype=torch.long) if labels is None else labels
    confidence = torch.ones(weak.shape) if confidence is None else confidence
    return module.strong_views(weak, labels, confidence, module.stream_generator(unlabeled, "unimatch"))


def test_strong_views_and_boxes_depend_on_the_stream_positions_alone():
    module = build("unimatch", "method.cutmix_prob=1")
    batch = make_batch()
    views, _ = _views(module, batch)
    torch.manual_seed(1234)  # the global generator (dropout) plays no part in the views
    again, _ = _views(module, batch)
    later = make_batch()
    later["unlabeled"]["position"] = batch["unlabeled"]["position"] + BATCH_SIZE
    other, _ = _views(module, later)
    assert len(views) == 2 and all(torch.equal(a, b) for a, b in zip(views, again))
    assert not torch.equal(views[0], other[0]) and not torch.equal(views[0], views[1])


def test_a_cutmix_box_takes_the_other_images_pseudo_label_and_confidence():
    module = build("unimatch", "method.cutmix_prob=1", "method.contrast_prob=0", "method.gamma_prob=0",
                   "method.blur_prob=0", "method.noise_prob=0")
    batch = make_batch()
    weak = batch["unlabeled"]["image"]
    index = torch.arange(BATCH_SIZE).reshape(-1, 1, 1, 1, 1)
    labels, confidence = index.expand(weak.shape), (index.float() / 10).expand(weak.shape)
    views, targets = _views(module, batch, labels, confidence)
    for view, (target, target_confidence) in zip(views, targets):
        from_partner = target != index
        assert from_partner.any() and not from_partner.all()
        # Where the label is the partner's, so are the voxels (strong augmentation off: the weak images) and the
        # confidence.
        partner = 1 - index  # a batch of two: each image's partner is the other
        torch.testing.assert_close(view, torch.where(from_partner, weak[partner.flatten()], weak))
        torch.testing.assert_close(target_confidence, target.float() / 10)


def test_unsupervised_loss_is_half_strong_views_half_feature_stream(monkeypatch):
    module = build("unimatch", "model.dropout=0", "method.confidence_threshold=0")
    losses = []
    import ssl_bench.methods.unimatch as unimatch
    monkeypatch.setattr(unimatch, "confident_dice_ce",
                        lambda *args, **kwargs: losses.append(confident_dice_ce(*args, **kwargs)) or losses[-1])
    loss = module.unsupervised_loss(make_batch(), {})
    assert len(losses) == 3
    assert loss.item() == pytest.approx((0.25 * losses[0] + 0.25 * losses[1] + 0.5 * losses[2]).item(), rel=1e-6)
    losses.clear()
    fixmatch = build("unimatch", "model.dropout=0", "method.confidence_threshold=0", *FIXMATCH)
    assert fixmatch.unsupervised_loss(make_batch(), {}).item() == pytest.approx(losses[0].item()) and len(losses) == 1


def test_the_feature_stream_decodes_a_perturbed_bottleneck_and_the_threshold_masks_the_loss():
    module = build("unimatch", "model.dropout=0", "method.confidence_threshold=0", "method.feature_dropout=0")
    batch = make_batch()
    without_dropout = module.unsupervised_loss(batch, {})
    perturbed = build("unimatch", "model.dropout=0", "method.confidence_threshold=0")
    perturbed.load_state_dict(module.state_dict())
    assert perturbed.unsupervised_loss(batch, {}).item() != pytest.approx(without_dropout.item())
    nothing_sure = build("unimatch", "method.confidence_threshold=1")
    assert nothing_sure.unsupervised_loss(batch, {}).item() == 0
    assert nothing_sure.logged["train/confident_fraction"] == 0


def test_fixmatch_runs_one_strong_view_per_unlabeled_image():
    module = build("unimatch", *FIXMATCH)
    calls = []
    module.net.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    module.training_step(make_batch(), 0)
    assert calls == [BATCH_SIZE, BATCH_SIZE, BATCH_SIZE]


def test_the_medical_codes_dice_only_loss_is_selectable_and_bad_settings_are_refused():
    batch = make_batch()
    torch.manual_seed(0)
    dice_ce = build("unimatch", "method.confidence_threshold=0").unsupervised_loss(batch, {})
    torch.manual_seed(0)
    dice = build("unimatch", "method.confidence_threshold=0", "method.pseudo_label_loss=dice").unsupervised_loss(
        batch, {})
    assert dice.item() < dice_ce.item()
    for override, key in [("method.strong_views=3", "method.strong_views"),
                          ("method.pseudo_label_loss=ce", "method.pseudo_label_loss"),
                          ("method.feature_dropout=1", "method.feature_dropout"),
                          ("method.cutmix_area=[0.5,0.1]", "method.cutmix_area")]:
        with pytest.raises(ConfigError, match=key):
            load_config("unimatch", "synthetic", [override])


def test_the_fixmatch_sweep_is_unimatch_with_one_strong_view_and_no_feature_stream():
    cells = load_sweep(PROJECT_ROOT / "experiments" / "sweeps" / "fixmatch.yaml").cells
    assert cells and all(c.method == "unimatch" for c in cells)
    assert all(c.config().method.strong_views == 1 and not c.config().method.feature_perturbation for c in cells)
