"""contrastive (Chaitanya et al. 2020): the losses on hand-computed examples, the GD- positives, the partition
crops, loading a pretrained backbone, and both stages end to end through the CLI."""

import json
import os
import signal
import math
import statistics

import pytest
import torch

from ssl_bench.cli import main
from ssl_bench.config import load_config
from ssl_bench.data.pretraining import PartitionCropBatches, partition_crop, partition_range
from ssl_bench.losses.contrastive import (local_contrastive_loss, local_positive_mask, nt_xent, partition_positive_mask,
                                          region_embeddings)
from ssl_bench.nets.pretrained import BackboneCheckpointError, save_backbone
from ssl_bench.registry import get_method
from ssl_bench.run.pretrain import ContrastivePretraining, crop_size, pretraining_config
from conftest import TINY

CLASS_NAMES = ["background", "organ1", "organ2", "organ3"]
# Four unit vectors at 0°, 90°, 180°, 270°: cosine similarities 0 to a neighbour, -1 to the opposite one.
SQUARE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def pairs_mask(n, pairs):
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, j in pairs:
        mask[i, j] = mask[j, i] = True
    return mask


# ---- NT-Xent ----------------------------------------------------------------------------------------------
def test_nt_xent_hand_computed_one_positive_per_anchor():
    # Anchor 0: positive 1 (sim 0); denominator over k ≠ 0: e^0 + e^(-1/τ) + e^0. Every anchor is alike.
    tau = 0.5
    expected = -math.log(math.exp(0 / tau) / (2 * math.exp(0 / tau) + math.exp(-1 / tau)))
    loss = nt_xent(SQUARE, pairs_mask(4, [(0, 1), (2, 3)]), tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert nt_xent(3 * SQUARE, pairs_mask(4, [(0, 1), (2, 3)]), tau).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_hand_computed_several_positives_averages_over_positives_then_anchors():
    # Positives 0-1 and 0-2; anchor 3 has none and is left out. Every denominator is D = 2 + e^(-2) (τ = 0.5).
    # anchor 0: mean(-log(e^0/D), -log(e^-2/D)) = log D + 1; anchor 1: log D; anchor 2: -log(e^-2/D) = log D + 2.
    log_d = math.log(2 + math.exp(-2))
    expected = ((log_d + 1) + log_d + (log_d + 2)) / 3
    assert nt_xent(SQUARE, pairs_mask(4, [(0, 1), (0, 2)]), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_a_loop_over_anchors_and_positives():
    g = torch.Generator().manual_seed(0)
    z, tau = torch.randn(6, 5, generator=g), 0.1
    mask = torch.rand(6, 6, generator=g) > 0.5
    zn = torch.nn.functional.normalize(z, dim=1)
    terms = []
    for i in range(6):
        positives = [j for j in range(6) if j != i and mask[i, j]]
        denominator = sum(math.exp(zn[i] @ zn[k] / tau) for k in range(6) if k != i)
        if positives:
            per_positive = [-math.log(math.exp(zn[i] @ zn[j] / tau) / denominator) for j in positives]
            terms.append(sum(per_positive) / len(per_positive))
    assert nt_xent(z, mask, tau).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_nt_xent_without_any_positive_is_an_error():
    with pytest.raises(ValueError, match="no anchor has a positive"):
        nt_xent(SQUARE, torch.eye(4, dtype=torch.bool), 0.1)


# ---- GD- positives ----------------------------------------------------------------------------------------
def test_partition_positives_are_the_other_view_and_the_same_partition_of_other_volumes():
    # Crops (volume, partition): a=(0,0) b=(0,1) c=(1,0) d=(1,1), then the same four in the second augmentation.
    volume = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    partition = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    view = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    mask = partition_positive_mask(volume, partition, view)
    positives = {i: sorted(mask[i].nonzero().flatten().tolist()) for i in range(8)}
    assert positives == {
        0: [2, 4, 6],  # (0,0): other volume same partition in both views, and itself in the other view
        1: [3, 5, 7],
        2: [0, 4, 6],
        3: [1, 5, 7],
        4: [0, 2, 6],
        5: [1, 3, 7],
        6: [0, 2, 4],
        7: [1, 3, 5],
    }
    # Never: the crop itself, another partition of the same volume, another partition of another volume.
    assert not mask.diagonal().any() and not mask[0, 1] and not mask[0, 5] and not mask[0, 3]


def test_local_positives_are_the_same_region_in_the_other_view():
    mask = local_positive_mask(3)
    assert mask.nonzero().tolist() == [[0, 3], [1, 4], [2, 5], [3, 0], [4, 1], [5, 2]]


def test_local_loss_hand_computed_for_orthogonal_regions_identical_in_both_views():
    # Each region's positive has sim 1; its 2R - 2 = 6 other regions sim 0.
    regions, tau = torch.eye(4).unsqueeze(0), 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 6))
    assert local_contrastive_loss(regions, regions, tau).item() == pytest.approx(expected, rel=1e-6)


def test_region_embeddings_are_grid_cell_means():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    assert region_embeddings(features, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


# ---- partition crops --------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch", [[8, 8], [8, 8, 4]], ids=["2D slice", "3D patch"])
def test_crops_come_from_their_partition_of_the_main_axis(patch):
    length, partitions, axis = 20, 4, 2
    volume = torch.arange(length, dtype=torch.float32).view(1, 1, 1, length).expand(1, 12, 12, length)
    g = torch.Generator().manual_seed(0)
    for p in range(partitions):
        for _ in range(20):
            crop = partition_crop(volume, p, partitions, axis, patch, g)
            assert list(crop.shape[1:]) == patch
            centre = crop[0, 0, 0] if len(patch) == 2 else crop[0, 0, 0, patch[axis] // 2]
            assert int(centre) in partition_range(length, p, partitions)


def test_a_batch_holds_one_crop_per_partition_of_distinct_volumes():
    volumes = [torch.randn(1, 12, 12, 16) for _ in range(5)]
    batch = PartitionCropBatches(volumes, 3, 4, 2, [8, 8, 8], steps=2, seed=0)[1]
    assert batch["image"].shape == (12, 1, 8, 8, 8)
    assert len(set(batch["volume_id"].tolist())) == 3
    assert batch["partition"].tolist() == [0, 1, 2, 3] * 3
    torch.testing.assert_close(PartitionCropBatches(volumes, 3, 4, 2, [8, 8, 8], 2, 0)[1]["image"], batch["image"])


@pytest.mark.parametrize("overrides, expected", [
    ([], [40, 56, 24]),  # three of the U-Net's total stride 8
    (["method.slab_thickness=8"], [40, 56, 8]),
    (["data.slice_axis=1"], [40, 24, 40]),
    (["method.partitions=8"], [40, 56, 24]),  # partitions place the slabs, not their thickness
    (["data.patch_size=[40,56,20]"], [40, 56, 16]),  # at most the patch, rounded down to a stride
    (["data.patch_size=[40,56,6]"], [40, 56, 8]),  # never thinner than one stride
    (["model.strides=[2,2]", "model.channels=[4,8,16]"], [40, 56, 12]),  # three strides of 4
    (["data.spatial_dims=2", "data.patch_size=[40,56]"], [40, 56]),  # 2D: a slice, the patch unchanged
])
def test_3d_crops_are_slabs_of_the_patch_along_the_main_axis(overrides, expected):
    cfg = load_config("contrastive", "synthetic", ["data.patch_size=[40,56,40]", "model.channels=[4,8,16,32]",
                                                   "model.strides=[2,2,2]", *overrides])
    assert crop_size(cfg) == expected


@pytest.mark.parametrize("dims", [3, 2])
def test_pretraining_loss_is_finite_and_trains_encoder_decoder_and_heads(dims):
    torch.manual_seed(0)
    shape = [f"data.spatial_dims={dims}", f"data.patch_size={[16] * dims}"]
    cfg = load_config("contrastive", "synthetic", [*TINY, *shape])
    module = ContrastivePretraining(cfg, len(CLASS_NAMES))
    volumes = [torch.randn(1, 20, 20, 20) for _ in range(3)]
    batch = PartitionCropBatches(volumes, 2, 4, 2, crop_size(cfg), steps=1, seed=0)[0]
    losses = module.losses(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    reached = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("global_head") for n in reached) and any(n.startswith("local_head") for n in reached)
    encoder_first_conv = next(n for n, _ in module.net.named_parameters())
    assert f"net.{encoder_first_conv}" in reached


# ---- init_from ----------------------------------------------------------------------------------------------
def build(*overrides, seed=0):
    torch.manual_seed(seed)
    cfg = load_config("contrastive", "synthetic", [*TINY, *overrides])
    return get_method("contrastive")(cfg, CLASS_NAMES, case_ids=["case0"])


def test_loading_a_pretrained_backbone_sets_the_initial_weights(tmp_path):
    pretrained = build(seed=1)
    path = tmp_path / "backbone.pt"
    save_backbone(pretrained.net, path, pretrained.backbone_architecture())
    fresh, loaded = build(seed=0), build(f"model.init_from={path}", seed=0)
    saved = pretrained.net.state_dict()
    assert any(not torch.equal(v, saved[k]) for k, v in fresh.net.state_dict().items())
    assert all(torch.equal(v, saved[k]) for k, v in loaded.net.state_dict().items())


def test_a_missing_backbone_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneCheckpointError, match=f"no backbone checkpoint at {tmp_path / 'none.pt'}"):
        build(f"model.init_from={tmp_path / 'none.pt'}")


def test_a_backbone_of_another_architecture_is_a_clear_error(tmp_path):
    other = build("model.channels=[4,8,32]")
    path = tmp_path / "backbone.pt"
    save_backbone(other.net, path, other.backbone_architecture())
    expected = r"holds a different backbone: model\.channels \[4, 8, 32\] there"
    with pytest.raises(BackboneCheckpointError, match=expected):
        build(f"model.init_from={path}")


def test_a_checkpoint_whose_weights_do_not_fit_is_a_clear_error(tmp_path):
    module = build()
    path = tmp_path / "backbone.pt"
    save_backbone(module.net, path, module.backbone_architecture())
    saved = torch.load(path, weights_only=False)
    first = next(iter(saved["state_dict"]))
    del saved["state_dict"][first]
    torch.save(saved, path)
    with pytest.raises(BackboneCheckpointError, match=f"does not fit the backbone: missing \\['{first}'\\]"):
        build(f"model.init_from={path}")
    torch.save(module.net.state_dict(), path)  # a bare state_dict, without the architecture header
    with pytest.raises(BackboneCheckpointError, match="is not a backbone checkpoint"):
        build(f"model.init_from={path}")


class _NotAWeight:
    pass


def test_an_unreadable_or_unsafe_backbone_file_is_a_clear_error_naming_it(tmp_path):
    module = build()
    path = tmp_path / "backbone.pt"
    save_backbone(module.net, path, module.backbone_architecture())
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a killed copy
    with pytest.raises(BackboneCheckpointError, match=f"{path} cannot be read .* \\(not a complete torch.save file\\)"):
        build(f"model.init_from={path}")
    # Arbitrary pickled objects are refused (weights_only), not unpickled.
    torch.save({"format": "ssl_bench.backbone/1", "architecture": _NotAWeight(), "state_dict": {}}, path)
    with pytest.raises(BackboneCheckpointError, match=f"{path} cannot be read .* would run their code"):
        build(f"model.init_from={path}")


def test_the_pretraining_config_has_no_fraction_its_own_budget_and_leaves_the_run_config_alone():
    cfg = load_config("contrastive", "synthetic", ["data.fraction=0.25", "data.partial.alpha=0.5",
                                                   "trainer.max_steps=7", "model.init_from=/some/backbone.pt"])
    plain = load_config("contrastive", "synthetic", ["trainer.max_steps=7"])
    assert pretraining_config(cfg) == pretraining_config(plain)
    budget = pretraining_config(load_config("contrastive", "synthetic", ["method.pretrain_steps=11"])).trainer.max_steps
    assert pretraining_config(cfg).trainer.max_steps == 7 and budget == 11
    assert (cfg.data.fraction, cfg.data.partial.alpha, cfg.model.init_from) == (0.25, 0.5, "/some/backbone.pt")


# ---- both stages through the CLI ----------------------------------------------------------------------------
def cli(tmp_path, cache, fraction, *extra):
    return main(["train", "--method", "contrastive", "--data", "synthetic", f"run.runs_dir={tmp_path}",
                 f"data.cache_dir={cache}", *TINY, f"data.fraction={fraction}", "trainer.max_steps=3",
                 "trainer.val_every_n_steps=3", "method.pretrain_steps=4", "method.pretrain_volumes=2", *extra])


def test_pretraining_once_per_draw_then_fine_tuning_every_fraction(tmp_path, synthetic_cache, monkeypatch):
    assert cli(tmp_path, synthetic_cache, 0.5) == 0
    pretrain_dir = tmp_path / "synthetic" / "contrastive_pretrain" / "draw0"
    backbone = pretrain_dir / "checkpoints" / "backbone.pt"
    record = json.loads((pretrain_dir / "pretrain.json").read_text())
    assert backbone.is_file() and record["steps"] == 4
    # Every training image (labeled or not), never a validation or test case.
    splits = json.loads((tmp_path / "synthetic" / "contrastive" / "frac0.5" / "draw0" / "splits.json").read_text())
    pretrained_on = set(json.loads((pretrain_dir / "cases.json").read_text())["pool"])
    assert pretrained_on == set(splits["labeled"] + splits["unlabeled"])
    assert not pretrained_on & set(splits["validation"] + splits["test"])

    # A second fraction of the same draw reuses the pretraining: training it again would fail here.
    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretraining redone")
    monkeypatch.setattr(ContrastivePretraining, "training_step", no_pretraining)
    # Fine-tuning starts from the pretrained backbone.
    starts = []
    monkeypatch.setattr(get_method("contrastive"), "on_train_start",
                        lambda self: starts.append({k: v.clone() for k, v in self.net.state_dict().items()}))
    assert cli(tmp_path, synthetic_cache, 0.25) == 0
    pretrained = torch.load(backbone, weights_only=False)["state_dict"]
    assert len(starts) == 1 and all(torch.equal(v, pretrained[k]) for k, v in starts[0].items())
    for fraction in (0.5, 0.25):
        run = tmp_path / "synthetic" / "contrastive" / f"frac{fraction}" / "draw0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == 3 and math.isfinite(metrics["primary"]["dice_mean"])
        assert metrics["pretrain_steps"] == 4 and metrics["pretrain_run_dir"] == str(pretrain_dir)
        assert metrics["pretrain_seconds_per_step"] == record["seconds_per_step"] > 0
        assert metrics["pretrain_wall_time_s"] == record["wall_time_s"] > 0
        assert f"init_from: {backbone}" in (run / "config.yaml").read_text()
    # Given by hand (a sweep on fine-tuning settings), the backbone still names its pretraining: the report then
    # knows the initialisation is the method's own stage, not a protocol change.
    assert cli(tmp_path, synthetic_cache, 0.5, f"model.init_from={backbone}", "run.tag=by_hand") == 0
    metrics = json.loads((tmp_path / "synthetic" / "contrastive-by_hand" / "frac0.5" / "draw0" / "metrics.json").read_text())
    assert metrics["pretrain_run_dir"] == str(pretrain_dir) and metrics["pretrain_steps"] == 4


def test_a_backbone_made_elsewhere_has_no_pretraining_record(tmp_path):
    from ssl_bench.run.pretrain import record_of_backbone
    (tmp_path / "checkpoints").mkdir()
    assert record_of_backbone(tmp_path / "checkpoints" / "backbone.pt") is None
    (tmp_path / "pretrain.json").write_text(json.dumps({"checkpoint": "elsewhere/checkpoints/other.pt"}))
    assert record_of_backbone(tmp_path / "checkpoints" / "backbone.pt") is None


def test_a_changed_pretraining_config_for_the_same_draw_is_an_error(tmp_path, synthetic_cache, capsys):
    assert cli(tmp_path, synthetic_cache, 0.5) == 0
    assert cli(tmp_path, synthetic_cache, 0.25, "method.partitions=2") != 0
    error = capsys.readouterr().err
    assert "contrastive_pretrain/draw0 holds a run with a different config (method.partitions" in error


def test_cells_running_at_once_wait_for_one_pretraining(tmp_path, capsys):
    """The pretraining folder's lock (ssl_bench/run/run_lock.py, as ensure_pretrained takes it): a second holder waits,
    saying for whom, until the first has released it."""
    import os
    import threading
    from ssl_bench.run.run_lock import run_folder_lock
    events = []
    first_holds, release_first = threading.Event(), threading.Event()

    def first():
        with run_folder_lock(tmp_path, wait=True):
            events.append("first in")
            first_holds.set()
            release_first.wait(5)
            events.append("first out")

    def second():
        first_holds.wait(5)
        with run_folder_lock(tmp_path, wait=True):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_holds.wait(5)
    threading.Event().wait(0.2)  # give the second a chance to (wrongly) enter
    release_first.set()
    for t in threads:
        t.join(10)
    assert events == ["first in", "first out", "second in"]
    assert f"{tmp_path}: waiting for pid {os.getpid()} on host" in capsys.readouterr().err


def test_a_resumed_pretraining_computes_what_an_uninterrupted_one_computes(tmp_path, synthetic_cache, monkeypatch,
                                                                           capsys):
    """Stopped by SIGTERM after step 1 of 4 and started again, the pretraining (random crops and augmentations drawn
    in the step, dropout) ends with the backbone of the same pretraining never stopped, bit for bit. Resumed before
    half its budget, Lightning used to end its epoch at step 3 and start another, whose new loader iterator drew its
    seed from torch's generator (fixed by OneEpochStreams)."""
    from ssl_bench.run.callbacks import STOPPED_EXIT_CODE, StepTimer
    pretraining = ("trainer.val_every_n_steps=2", "trainer.max_steps=2")

    def backbone(root):
        path = root / "synthetic" / "contrastive_pretrain" / "draw0" / "checkpoints" / "backbone.pt"
        return torch.load(path, weights_only=False)["state_dict"]
    assert cli(tmp_path / "a", synthetic_cache, 0.5, *pretraining) == 0

    time_step = StepTimer.on_train_batch_end

    def time_step_then_stop(self, trainer, *args):
        time_step(self, trainer, *args)
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(StepTimer, "on_train_batch_end", time_step_then_stop)
    assert cli(tmp_path / "b", synthetic_cache, 0.5, *pretraining) == STOPPED_EXIT_CODE
    monkeypatch.undo()
    run = tmp_path / "b" / "synthetic" / "contrastive_pretrain" / "draw0"
    assert not (run / "pretrain.json").exists()
    timed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["StepTimer"]
    assert len(timed["durations"]) == 1
    assert cli(tmp_path / "b", synthetic_cache, 0.5, *pretraining) == 0
    # Its recorded cost covers the steps of the stopped process too (method.pretrain_steps=4).
    record = json.loads((run / "pretrain.json").read_text())
    all_steps = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["StepTimer"]
    assert all_steps["durations"][:1] == timed["durations"] and len(all_steps["durations"]) == 4
    assert record["resumed_from_step"] == 1 and record["seconds_per_step"] == statistics.median(all_steps["durations"])
    assert record["wall_time_s"] > all_steps["wall_time_s"] > timed["wall_time_s"]
    expected, got = backbone(tmp_path / "a"), backbone(tmp_path / "b")
    differing = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not differing, f"{len(differing)} of {len(expected)} tensors differ, e.g. {differing[:3]}"

    # A pretrain.json cut short does not count as a finished pretraining: named, and rewritten from its last
    # checkpoint (no step trained again) when the next fraction's fine-tuning asks for it.
    (run / "pretrain.json").write_text(json.dumps(record)[:30])
    assert cli(tmp_path / "b", synthetic_cache, 0.25, *pretraining) == 0
    assert f"{run / 'pretrain.json'}: not valid JSON" in capsys.readouterr().err
    assert json.loads((run / "pretrain.json").read_text())["resumed_from_step"] == 4
    assert not [name for name, value in backbone(tmp_path / "b").items() if not torch.equal(value, expected[name])]
