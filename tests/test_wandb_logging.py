"""What a run logs to W&B: image panels in W&B's 0-255 range that show the ground truth and the prediction, and a
summary with cost, best-on-validation and test metrics and a per-case table; offline, read back from the run folder."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_bench.cli import main
from ssl_bench.run.wandb_logging import (CLASS_COLOURS, OVERLAY_ALPHA, PANEL_GAP, colour_legend, informative_slice,
                                         overlay_panel, run_summary)
from conftest import TINY


def test_overlay_panel_is_image_ground_truth_and_prediction_in_0_to_255():
    image = np.linspace(-2.0, 3.0, 8 * 6).reshape(8, 6)  # z-scored intensities, as the data module gives them
    label = np.zeros((8, 6), dtype=np.int64)
    label[2:4, 1:3], label[5, 4] = 1, 2
    prediction = np.zeros_like(label)
    prediction[2:4, 2:4] = 1
    panel = overlay_panel(image, label, prediction)
    assert panel.dtype == np.uint8 and panel.shape == (8, 3 * 6 + 2 * PANEL_GAP, 3)
    plain, truth, predicted = (panel[:, i * (6 + PANEL_GAP):i * (6 + PANEL_GAP) + 6].astype(float) for i in range(3))
    assert plain.min() == 0 and plain.max() == 255  # the image's whole window, not [0, 1]
    assert np.array_equal(plain[..., 0], plain[..., 2])  # grey
    for overlay, labels in ((truth, label), (predicted, prediction)):
        assert np.array_equal(overlay[labels == 0], plain[labels == 0])
        for k in (1, 2):
            colour = np.array(CLASS_COLOURS[k - 1][1])
            expected = np.round((1 - OVERLAY_ALPHA) * plain[labels == k] + OVERLAY_ALPHA * colour)
            assert np.array_equal(overlay[labels == k], expected)
    assert colour_legend(["background", "anterior", "posterior"]) == "anterior red, posterior blue"


def test_the_slice_shown_is_the_one_with_the_most_ground_truth():
    label = np.zeros((4, 5, 6), dtype=np.int64)
    label[1, 1:3, 4] = 1
    label[2, 1:4, 4] = 2
    assert informative_slice(label, axis=2) == 4 and informative_slice(label, axis=0) == 2
    assert informative_slice(np.zeros((4, 5, 6)), axis=2) == 3


def test_run_summary_has_cost_best_on_validation_and_every_network():
    values = {"n_cases": 6, "dice_mean": 0.5, "hd95_mean": 3.0}
    metrics = {"primary": {"checkpoint": "last", "model": "teacher", **values},
               "results": {"last": {"student": values, "teacher": values}, "best": {"student": values, "teacher": values}},
               "best_checkpoint": "best-40.ckpt", "seconds_per_step": 0.5, "wall_time_s": 30.0, "steps": 60,
               "resumed_from_step": 0, "peak_memory_mb": 900.0, "n_parameters": 10, "n_parameters_total": 20,
               "pretrain_seconds_per_step": 1.5, "pretrain_run_dir": "runs/x", "n_labeled": 8, "n_unlabeled": 7,
               "n_validation": 3, "n_test": 6}
    summary = run_summary(metrics, best_validation_dice=0.7)
    assert {"test/dice_mean", "test/hd95_mean", "test_student/dice_mean", "best/dice_mean", "best_student/dice_mean",
            "cost/seconds_per_step", "cost/wall_time_s", "cost/n_parameters", "cost/peak_memory_mb",
            "cost/pretrain_seconds_per_step", "data/n_labeled"} <= set(summary)
    assert summary["best/val_dice_mean"] == 0.7 and summary["best/checkpoint"] == "best-40.ckpt"
    assert "cost/pretrain_run_dir" not in summary


# ---- an offline run, read back from its folder ------------------------------------------------------------
def _log_records(path: Path) -> list:
    """The records of a W&B transaction log (run-<id>.wandb): a LevelDB-style log of 32 KiB blocks, each record in
    chunks with a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2
    data, block, pos, records, pending = path.read_bytes(), 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _summary_and_config(offline_run: Path):
    """The run's final summary and its config, keys as "a/b" (nested keys joined)."""
    summary, config = {}, {}
    for record in _log_records(next(offline_run.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind in ("summary", "config"):
            target = summary if kind == "summary" else config
            target.update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                           for u in getattr(record, kind).update})
    return summary, config


def test_an_offline_run_holds_visible_panels_and_a_summary_to_compare_methods(tmp_path, synthetic_cache, monkeypatch,
                                                                             capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    args = ["train", "--method", "mean_teacher", "--data", "synthetic", f"run.runs_dir={tmp_path}",
            f"data.cache_dir={synthetic_cache}", *[a for a in TINY if a != "logging.wandb=false"],
            "data.fraction=0.5", "trainer.max_steps=2", "trainer.val_every_n_steps=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "synthetic" / "mean_teacher" / "frac0.5" / "draw0"
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert f"wandb sync {offline_runs[0]}" in out and "wandb:" not in out  # one line of its own, no W&B banner

    panels = sorted((offline_runs[0] / "files" / "media" / "images" / "val").glob("overlay_*.png"))
    assert len(panels) == 2  # logging.n_images
    for png in panels:
        pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
        width = (pixels.shape[1] - 2 * PANEL_GAP) // 3
        plain, truth = pixels[:, :width], pixels[:, width + PANEL_GAP:2 * width + PANEL_GAP]
        assert plain.max() == 255 and plain.min() == 0  # not the [0, 1] floats that rendered black
        assert (truth != plain).any(axis=-1).sum() > 0  # the ground truth shows (the slice with the most of it)

    summary, config = _summary_and_config(offline_runs[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert summary["test/dice_mean"] == pytest.approx(metrics["primary"]["dice_mean"])
    assert summary["test_student/dice_mean"] == pytest.approx(metrics["results"]["last"]["student"]["dice_mean"])
    assert summary["best/dice_mean"] == pytest.approx(metrics["results"]["best"]["teacher"]["dice_mean"])
    assert 0.0 <= summary["best/val_dice_mean"] <= 1.0
    assert summary["cost/seconds_per_step"] == pytest.approx(metrics["seconds_per_step"])
    assert summary["cost/n_parameters"] == metrics["n_parameters"] and summary["cost/peak_memory_mb"] > 0
    assert summary["test/per_case/_type"] == "table-file"
    table = json.loads((offline_runs[0] / "files" / summary["test/per_case/path"]).read_text())
    # checkpoints last, best and test_best (the test-selection audit), two networks each
    assert "case_id" in table["columns"] and len(table["data"]) == 3 * 2 * metrics["n_test"]
    assert config["method"]["name"] == "mean_teacher" and config["data"]["fraction"] == 0.5
