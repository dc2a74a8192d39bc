"""The partial-annotation protocol (flags, label removal, run-folder record) and SMILE / SMILEr (Petit et al.
2018): the ambiguity map, the loss, decoding, relabeling, voxel lookup through random patches, and both
methods end to end on the synthetic multi-organ set through the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_bench.cli import main
from ssl_bench.config import ConfigError, load_config
from ssl_bench.data.datamodule import SegmentationDataModule
from ssl_bench.data.manifest import load_manifest
from ssl_bench.data.partial import RemoveUnannotatedOrgans, partial_annotation_flags
from ssl_bench.data.splits import split_pool
from ssl_bench.losses.partial_label import (ambiguity_map, decode_sigmoid, mc_dropout_scores, pseudo_labels_at,
                                             relabel_missing_organs, relabel_round_steps, relabel_top_fraction,
                                            smile_loss, smile_targets_and_weights, weighted_bce)
from ssl_bench.data.dataset import resolve_dataset
from ssl_bench.nets.backbone import build_backbone, dropout_sampling
from ssl_bench.registry import get_method
from conftest import TINY

CASES = [f"case{i:02d}" for i in range(20)]


# ---- flags --------------------------------------------------------------------------------------------------
def test_alpha_zero_removes_nothing_and_alpha_one_removes_every_annotation():
    assert all(all(f) for f in partial_annotation_flags(CASES, 3, 0.0, draw=0).values())
    assert all(not any(f) for f in partial_annotation_flags(CASES, 3, 1.0, draw=0).values())


def test_each_class_loses_round_alpha_n_annotations_independently_of_the_others():
    flags = partial_annotation_flags(CASES, 4, 0.3, draw=0)
    assert set(flags) == set(CASES)
    removed = [{c for c in CASES if not flags[c][k]} for k in range(4)]
    assert [len(r) for r in removed] == [6] * 4
    assert len({frozenset(r) for r in removed}) > 1  # each class has its own seeded order


def test_flags_are_nested_in_alpha_deterministic_and_depend_on_the_draw():
    alphas = [0.0, 0.1, 0.25, 0.5, 0.8, 1.0]
    removed = [{(c, k) for c, f in partial_annotation_flags(CASES, 3, a, draw=2).items() for k, ok in enumerate(f)
                if not ok} for a in alphas]
    assert all(a <= b for a, b in zip(removed, removed[1:]))
    assert partial_annotation_flags(CASES, 3, 0.5, draw=2) == partial_annotation_flags(list(reversed(CASES)), 3, 0.5,
                                                                                         draw=2)
    assert partial_annotation_flags(CASES, 3, 0.5, draw=2) != partial_annotation_flags(CASES, 3, 0.5, draw=3)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_alpha_outside_the_unit_interval_is_an_error(alpha):
    with pytest.raises(ValueError, match="alpha"):
        partial_annotation_flags(CASES, 2, alpha, draw=0)
    if not math.isnan(alpha):
        with pytest.raises(ConfigError, match="data.partial.alpha"):
            load_config("smile", "synthetic", [f"data.partial.alpha={alpha}"])


def test_removed_organs_become_background_and_the_full_label_and_voxel_index_are_kept():
    label = torch.tensor([[[0, 1, 2], [3, 2, 1]]])  # (1, 2, 3): channel first
    out = RemoveUnannotatedOrgans(keep_full=True, voxel_index=True)(
        {"label": label, "annotated": torch.tensor([True, False, True])})
    assert out["label"].tolist() == [[[0, 1, 0], [3, 0, 1]]]
    assert torch.equal(out["label_full"], label)
    assert out["voxel_index"].tolist() == [[[1, 2, 3], [4, 5, 6]]]


# ---- SMILE loss -------------------------------------------------------------------------------------------
def test_ambiguity_map_on_a_hand_made_example():
    # One case, 6 voxels: background, organ 1, organ 2, background, organ 3 annotated; organ 2 not annotated,
    # so its voxels are background in the label (the 4th voxel was organ 2 before removal).
    label = torch.tensor([[[0, 1, 1, 0, 3, 0]]])
    annotated = torch.tensor([[True, False, True]])
    w = ambiguity_map(label, annotated, n_organs=3)
    assert w.tolist() == [[[1, 1, 1, 1, 1, 1],     # organ 1 annotated: every voxel counts
                           [0, 1, 1, 0, 1, 0],     # organ 2 missing: other organs' voxels are negatives, rest ignored
                           [1, 1, 1, 1, 1, 1]]]    # organ 3 annotated


def _random_case(seed=0, shape=(2, 1, 6, 6, 6), n_organs=3):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(n_organs + 1, shape, generator=g)
    logits = torch.randn(shape[0], n_organs, *shape[2:], generator=g)
    return logits, label


def test_gradient_is_exactly_zero_at_ignored_voxels():
    logits, label = _random_case()
    annotated = torch.tensor([[True, False, True], [False, False, True]])
    logits.requires_grad_(True)
    smile_loss(logits, label, annotated, dice_on_annotated=True).backward()
    ignored = ambiguity_map(label, annotated, 3) == 0
    assert ignored.any() and (~ignored).any()
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.all(logits.grad[~ignored] != 0)


def test_loss_is_plain_bce_when_every_organ_is_annotated():
    logits, label = _random_case()
    annotated = torch.ones(2, 3, dtype=torch.bool)
    one_hot = F.one_hot(label[:, 0], 4).movedim(-1, 1)[:, 1:].float()
    expected = F.binary_cross_entropy_with_logits(logits, one_hot)
    torch.testing.assert_close(smile_loss(logits, label, annotated, dice_on_annotated=False), expected)


def test_relabeled_voxels_of_a_missing_organ_are_positives_that_count():
    label = torch.tensor([[[0, 0, 2, 0]]])
    annotated = torch.tensor([[False, True]])
    pseudo = torch.tensor([[[True, False, False, False], [True, False, False, False]]])
    targets, weights = smile_targets_and_weights(label, annotated, 2, pseudo)
    assert targets.tolist() == [[[1, 0, 0, 0], [0, 0, 1, 0]]]  # annotated organ 2 ignores pseudo-labels
    assert weights.tolist() == [[[1, 0, 1, 0], [1, 1, 1, 1]]]
    assert weighted_bce(torch.zeros(1, 2, 4), targets, torch.zeros(1, 2, 4)) == 0  # nothing counts: 0, not NaN


def test_decoding_thresholds_and_resolves_overlaps_by_the_highest_score():
    probs = torch.tensor([[[0.9, 0.2, 0.6, 0.4], [0.7, 0.1, 0.8, 0.3]]])  # (1, K=2, 4 voxels)
    assert decode_sigmoid(torch.logit(probs), 0.5).tolist() == [[1, 0, 2, 0]]


# ---- SMILEr relabeling ----------------------------------------------------------------------------------------
def test_relabeling_picks_exactly_the_top_gamma_fraction_of_predicted_positives():
    scores = torch.tensor([0.95, 0.2, 0.6, 0.8, 0.55, 0.99, 0.7, 0.3])
    candidates = torch.ones(8, dtype=torch.bool)
    candidates[5] = False  # e.g. labeled as another organ: never relabeled
    # predicted positive candidates by score: 0.95 (0), 0.8 (3), 0.7 (6), 0.6 (2), 0.55 (4)
    for gamma, expected in [(0.2, {0}), (0.4, {0, 3}), (0.6, {0, 3, 6}), (1.0, {0, 3, 6, 2, 4})]:
        assert set(relabel_top_fraction(scores, candidates, gamma).nonzero().flatten().tolist()) == expected
    assert not relabel_top_fraction(scores, candidates, 0.0).any()


def test_relabeling_picks_nothing_when_nothing_is_predicted_positive():
    scores = torch.rand(4, 5, 6) * 0.5
    selected = relabel_top_fraction(scores, torch.ones_like(scores, dtype=torch.bool), 1.0)
    assert selected.shape == scores.shape and not selected.any()


def test_relabeling_by_uncertainty_keeps_the_least_variable_predicted_positives():
    scores = torch.tensor([0.95, 0.2, 0.6, 0.8, 0.55, 0.99, 0.7, 0.3])
    variance = torch.tensor([0.04, 0.0, 0.001, 0.02, 0.003, 0.0, 0.01, 0.0])
    candidates = torch.ones(8, dtype=torch.bool)
    candidates[5] = False
    # predicted positive candidates by variance: 0.001 (2), 0.003 (4), 0.01 (6), 0.02 (3), 0.04 (0)
    for gamma, expected in [(0.2, {2}), (0.4, {2, 4}), (0.6, {2, 4, 6}), (1.0, {0, 3, 6, 2, 4})]:
        assert set(relabel_top_fraction(scores, candidates, gamma, rank_by=-variance).nonzero().flatten().tolist()) \
            == expected
    assert set(relabel_top_fraction(scores, candidates, 0.4).nonzero().flatten().tolist()) == {0, 3}  # by score


def test_mc_dropout_scores_are_the_mean_and_the_variance_over_the_passes():
    samples = torch.tensor([[0.2, 0.9], [0.4, 0.9], [0.6, 0.9]])
    mean, variance = mc_dropout_scores(samples)
    assert mean.tolist() == pytest.approx([0.4, 0.9]) and variance.tolist() == pytest.approx([0.08 / 3, 0.0])


def test_dropout_sampling_draws_masks_with_inference_norms_and_restores_every_mode():
    cfg = load_config("smiler", "synthetic", [*TINY, "model.norm=batch", "model.dropout=0.5"])
    net = build_backbone(cfg.model, 3, 1, 2)
    x = torch.randn(2, 1, 16, 16, 16)
    net.train()
    rng_before = torch.get_rng_state()
    with dropout_sampling(net, seed=7):
        kinds = {type(m).__name__: m.training for m in net.modules()}  # the network's own mode as "Backbone"
        first, second = net(x), net(x)
    with dropout_sampling(net, seed=7):
        again = net(x)
    assert kinds["Dropout"] and not kinds["BatchNorm3d"] and not kinds["Backbone"]
    assert not torch.allclose(first, second) and torch.equal(first, again)  # a new mask a pass, seeded
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training's generator is left where it was
    assert all(m.training for m in net.modules())


def test_smiler_mc_dropout_scores_are_the_mean_of_mc_samples_passes_ranked_by_their_variance():
    cfg = load_config("smiler", "synthetic", [*TINY, "method.relabel_criterion=mc_dropout", "method.mc_samples=3",
                                              "model.dropout=0.5"])
    module = get_method("smiler")(cfg, ["background", "a", "b"], ["c0"])
    calls = []
    module.net.register_forward_pre_hook(lambda m, args: calls.append(m.training))
    image = torch.randn(1, 1, 16, 16, 16)  # one window of the 16^3 patch
    scores, ranking = module.relabel_scores(image, round_t=1)
    assert calls == [False] * 3 and module.net.training  # three passes, and the mode restored
    assert scores.shape == ranking.shape == (2, 16, 16, 16) and (ranking <= 0).all() and (ranking < 0).any()
    with torch.no_grad():
        module.net.eval()
        plain = module.net(image)[0].sigmoid()
    assert not torch.allclose(scores, plain)  # not the eval-mode prediction, which the score criterion takes
    assert torch.equal(module.relabel_scores(image, round_t=1)[0], scores)  # seeded by run and round
    cfg.method.relabel_criterion = "score"
    assert torch.allclose(module.relabel_scores(image, round_t=1)[0], plain) and module.relabel_scores(image, 1)[1] \
        is None


@pytest.mark.parametrize("overrides, key", [
    (["method.relabel_criterion=entropy"], "method.relabel_criterion"),
    (["method.relabel_criterion=mc_dropout", "model.dropout=0"], "model.dropout"),
    (["method.relabel_criterion=mc_dropout", "method.mc_samples=1"], "method.mc_samples"),
])
def test_mc_dropout_relabeling_needs_dropout_and_several_passes(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config("smiler", "synthetic", [*TINY, *overrides])


def test_relabel_round_steps_are_pure_arithmetic_of_the_budget():
    assert relabel_round_steps(1200, 0.5, 3) == [600, 800, 1000]
    assert relabel_round_steps(10, 0.3, 1) == [3]  # 0.3 x 10 is 3, not 2
    assert relabel_round_steps(4, 0.5, 3) == [2, 2, 3]  # tiny budgets: rounds share a step


def test_a_cases_round_relabels_only_its_missing_organs_and_counts_what_is_right():
    scores = torch.tensor([[0.9, 0.8, 0.6, 0.1], [0.9, 0.9, 0.9, 0.9]])  # (K=2, 4 voxels)
    label = torch.tensor([0, 0, 0, 2])  # organ 2 annotated at voxel 3; organ 1 removed
    full = torch.tensor([1, 0, 1, 2])  # the removed truth: organ 1 at voxels 0 and 2
    relabeled, voxels, correct = relabel_missing_organs(scores, label, full, [0], gamma=1.0, threshold=0.5)
    assert relabeled[0].tolist() == [True, True, True, False] and not relabeled[1].any()
    assert voxels == [3, 0] and correct == [2, 0]
    by_ranking, _, _ = relabel_missing_organs(scores, label, full, [0], 1 / 3, 0.5,
                                              ranking=torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0] * 4]))
    assert by_ranking[0].tolist() == [False, False, True, False]  # the top third by the ranking, not the score


def test_pseudo_labels_are_looked_up_through_the_voxel_index_and_padding_gets_none():
    volume = torch.tensor([[True, False, True], [False, True, False]])  # (K=2, 3 voxels)
    index = torch.tensor([[[3, 0], [1, 2]], [[1, 1], [2, 3]]])  # (B=2, 2x2 patch), 0 = padding
    out = pseudo_labels_at(index, [volume, None], n_organs=2)
    assert out.shape == (2, 2, 2, 2) and not out[1].any()
    assert out[0, 0].tolist() == [[True, False], [True, False]] and out[0, 1].tolist() == [[False, False], [False, True]]


def test_round_start_steps_follow_the_smile_phase_and_are_evenly_spaced():
    cfg = load_config("smiler", "synthetic", [*TINY, "trainer.max_steps=1200"])
    module = get_method("smiler")(cfg, ["background", "a", "b"], ["c0"])
    assert module.round_start_steps() == [600, 800, 1000]


# ---- data: flags in batches, voxel index through random patches ----------------------------------------------
@pytest.mark.parametrize("dims", [3, 2])
def test_labeled_patches_carry_flags_and_a_voxel_index_that_finds_their_voxels(dims, synthetic_cache):
    cfg = load_config("smiler", "synthetic", [*TINY, f"data.cache_dir={synthetic_cache}", "data.fraction=0.5",
                                              f"data.spatial_dims={dims}", f"data.patch_size={[16] * dims}",
                                              "data.labeled_batch_size=4"])
    manifest, root = resolve_dataset(cfg)
    split = split_pool(manifest.pool, 0.5, 0)
    flags = partial_annotation_flags(split.labeled, 3, 0.5, draw=0)
    dm = SegmentationDataModule(cfg, manifest, root, split, {c: [1.0] * 3 for c in split.labeled},
                                uses_unlabeled=False, annotated=flags, voxel_index=True)
    volumes = {int(v["case_index"][0]): v for v in dm.labeled_volumes_loader()}
    batch = next(dm.training_batches())["labeled"]
    for b, case in enumerate(batch["case_index"].tolist()):
        case_id = manifest.cases[case].id
        assert batch["annotated"][b].tolist() == flags[case_id]
        volume = volumes[case]
        index, patch_label = batch["voxel_index"][b, 0], batch["label"][b, 0]
        inside = index > 0
        assert inside.any()
        assert torch.equal(volume["label"][0, 0].flatten()[index[inside] - 1], patch_label[inside])
        for k, annotated in enumerate(flags[case_id]):
            if not annotated:  # the naive baseline's view: a removed organ is background
                assert not (patch_label == k + 1).any() and not (volume["label"] == k + 1).any()
                assert (volume["label_full"] == k + 1).any()


# ---- end to end through the CLI on the synthetic multi-organ set ------------------------------------------------
def _multiorgan_args(method, tmp_path, cache, *extra):
    tiny = [o for o in TINY if not o.startswith("data.synthetic.shape")]
    return ["train", "--method", method, "--data", "synthetic_multiorgan", f"run.runs_dir={tmp_path}",
            f"data.cache_dir={cache}", *tiny, "data.synthetic.shape=[32,32,32]", "data.fraction=0.5",
            "data.partial.alpha=0.5", "trainer.max_steps=6", "trainer.val_every_n_steps=6", *extra]


def _check_partial_record(run: Path, n_organs: int):
    record = json.loads((run / "partial_annotations.json").read_text())
    labeled = json.loads((run / "splits.json").read_text())["labeled"]
    expected = partial_annotation_flags(labeled, n_organs, 0.5, draw=0)
    assert record["alpha"] == 0.5 and len(record["classes"]) == n_organs
    assert {c: list(f.values()) for c, f in record["annotated"].items()} == expected


@pytest.mark.parametrize("method", ["smile", "supervised", "marginal"])
def test_end_to_end_with_half_the_annotations_removed(method, tmp_path, synthetic_cache):
    assert main(_multiorgan_args(method, tmp_path, synthetic_cache)) == 0
    run = tmp_path / "synthetic_multiorgan" / method / "frac0.5" / "draw0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and len(metrics["classes"]) == 5 and metrics["partial_alpha"] == 0.5
    assert math.isfinite(metrics["primary"]["dice_mean"])
    _check_partial_record(run, 5)


@pytest.mark.parametrize("criterion", ["score", "mc_dropout"])
def test_smiler_end_to_end_logs_and_records_every_relabeling_round(criterion, tmp_path, synthetic_cache):
    # 6 steps, SMILE for the first half: rounds at steps 3, 4, 5.
    assert main(_multiorgan_args("smiler", tmp_path, synthetic_cache, f"method.relabel_criterion={criterion}",
                                 "method.mc_samples=2")) == 0
    run = tmp_path / "synthetic_multiorgan" / "smiler" / "frac0.5" / "draw0"
    _check_partial_record(run, 5)
    rounds = json.loads((run / "relabeling.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2, 3] and [r["step"] for r in rounds] == [3, 4, 5]
    assert [r["gamma"] for r in rounds] == pytest.approx([1 / 3, 2 / 3, 1.0])
    for r in rounds:
        assert r["relabeled_voxels"] == sum(o["relabeled_voxels"] for o in r["per_organ"].values())
        assert math.isnan(r["precision"]) if r["relabeled_voxels"] == 0 else 0 <= r["precision"] <= 1
    # the record (metrics.json, what results/records keeps of a run) holds the rounds too
    kept = json.loads((run / "metrics.json").read_text())["run_records"]["relabeling.json"]
    assert json.dumps(kept) == json.dumps(rounds)
    logged = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"relabel/voxels", "relabel/precision", "relabel/gamma"} <= set(logged)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["smiler"]["rounds_done"] == 3 and len(checkpoint["smiler"]["pseudo"]) > 0
