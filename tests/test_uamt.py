"""The Left Atrium in UA-MT's layout: `ssl-bench data import-uamt` (split, spacing, downsampling, bad input), the
V-Net and the LA protocols' pieces (step schedule, sliding-window stride, first_then_draw, data roots)."""

import json
import math
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from ssl_bench.cli import main
from ssl_bench.config import ConfigError, data_root, load_config
from ssl_bench.data.splits import split_pool
from ssl_bench.data.uamt import CASES_DIR, PAPERS_LABELED_MAX, VOLUME_FILE, downsample_volume
from ssl_bench.nets.backbone import build_backbone, count_parameters
from ssl_bench.nets.vnet import VNet
from ssl_bench.run.evaluation import window_overlap
from ssl_bench.utils.ramps import learning_rate_factor
from conftest import PROJECT_ROOT

N_TRAIN, N_TEST = PAPERS_LABELED_MAX + 10, 3


def _case(src: Path, name: str, shape, image=None, label=None, keys=("image", "label")):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    folder = src / CASES_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    data = {"image": rng.normal(size=shape).astype(np.float32) if image is None else image,
            "label": (rng.random(shape) > 0.7).astype(np.uint8) if label is None else label}
    with h5py.File(folder / VOLUME_FILE, "w") as f:
        for key in keys:
            f.create_dataset(key, data=data[key])
    return data


def _folder(tmp_path, depth=44):
    src = tmp_path / "LA"
    train = [f"train{i:02d}" for i in range(N_TRAIN)]
    test = [f"test{i}" for i in range(N_TEST)]
    volumes = {name: _case(src, name, (6 + i % 3, 5, depth)) for i, name in enumerate(train + test)}
    (src / "train.list").write_text("\n".join(train) + "\n")
    (src / "test.list").write_text("\n".join(test) + "\n")
    return src, train, test, volumes


def _import(tmp_path, src, *extra):
    outputs = {"manifest": tmp_path / "la.json", "config": tmp_path / "la.yaml", "root": tmp_path / "root"}
    code = main(["data", "import-uamt", str(src), "--name", "la", "--root", str(outputs["root"]),
                 "--out", str(outputs["manifest"]), "--data-config", str(outputs["config"]), *extra])
    return code, outputs


def test_import_keeps_the_papers_split_and_writes_the_volumes_with_their_spacing(tmp_path, capsys):
    src, train, test, volumes = _folder(tmp_path)
    code, out = _import(tmp_path, src)
    assert code == 0
    assert "--patient-regex" not in capsys.readouterr().out  # one scan per patient: no hint to group images
    m = json.loads(out["manifest"].read_text())
    assert m["test"] == test  # test.list exactly
    assert len(m["validation"]) == 8 and set(m["validation"]) <= set(train[PAPERS_LABELED_MAX:])
    pool = [c["id"] for c in m["cases"] if c["id"] not in m["test"] + m["validation"]]
    assert pool[:PAPERS_LABELED_MAX] == train[:PAPERS_LABELED_MAX] and pool == [n for n in train if n in pool]
    assert m["spacing"] == [1.25] * 3  # 44 slices: the half-resolution copy
    image = nib.load(out["root"] / "la" / "imagesTr" / f"{train[3]}.nii.gz")
    label = nib.load(out["root"] / "la" / "labelsTr" / f"{train[3]}.nii.gz")
    assert image.header.get_zooms() == (1.25, 1.25, 1.25)
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), volumes[train[3]]["image"])
    np.testing.assert_array_equal(np.asarray(label.dataobj), volumes[train[3]]["label"])
    config = out["config"].read_text()
    assert "protocol: la_cpu" in config and "labeled_selection: first_then_draw" in config


def test_first_then_draw_labels_the_papers_first_cases_at_draw_0_and_a_seeded_draw_after():
    pool = [f"case{i:02d}" for i in range(30)]
    assert split_pool(pool, n_labeled=4, draw=0, selection="first_then_draw").labeled == pool[:4]
    for draw in (1, 2):
        seeded = split_pool(pool, n_labeled=8, draw=draw, selection="draw")
        assert split_pool(pool, n_labeled=8, draw=draw, selection="first_then_draw") == seeded
    four = split_pool(pool, n_labeled=4, draw=2, selection="first_then_draw").labeled
    assert set(four) < set(seeded.labeled) and four != pool[:4]  # nested, and not the papers' set


def test_downsample_2_is_the_half_resolution_operation():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 4, 6)).astype(np.float32)  # the odd axis loses its last voxel
    label = np.zeros((5, 4, 6), np.uint8)
    label[0:2, 0:2, 0:2].flat[:4] = 1  # 4 of 8: foreground
    label[2:4, 0:2, 0:2].flat[:3] = 1  # 3 of 8: background
    small_image, small_label = downsample_volume(image, label, 2)
    assert small_image.shape == (2, 2, 3) and small_image.dtype == np.float32
    assert small_image[1, 0, 2] == pytest.approx(image[2:4, 0:2, 4:6].mean(dtype=np.float64), abs=1e-6)
    assert small_label[0, 0, 0] == 1 and small_label[1, 0, 0] == 0 and small_label.sum() == 1


def test_import_downsample_2_of_a_full_resolution_folder(tmp_path):
    src, train, _, volumes = _folder(tmp_path, depth=88)
    code, out = _import(tmp_path, src, "--downsample", "2")
    assert code == 0
    assert json.loads(out["manifest"].read_text())["spacing"] == [1.25] * 3  # 0.625 mm x 2
    written = nib.load(out["root"] / "la" / "imagesTr" / f"{train[0]}.nii.gz").get_fdata(dtype=np.float32)
    expected, _ = downsample_volume(volumes[train[0]]["image"], volumes[train[0]]["label"], 2)
    np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize("break_it, problem", [
    (lambda src, n: (src / "train.list").write_text((src / "train.list").read_text() + "ghost\n"), "ghost"),
    (lambda src, n: _case(src, n, (6, 5, 44), keys=("image",)), "no dataset 'label'"),
    (lambda src, n: _case(src, n, (6, 5, 44), label=np.zeros((6, 5, 40), np.uint8)), "differs from the image's"),
    (lambda src, n: _case(src, n, (6, 5, 44), label=np.full((6, 5, 44), 2, np.uint8)), "outside {0, 1}"),
    (lambda src, n: _case(src, n, (6, 5, 44), image=np.full((6, 5, 44), np.nan, np.float32)), "NaN or Inf"),
])
def test_bad_input_exits_non_zero_naming_the_file_and_writes_nothing(tmp_path, capsys, break_it, problem):
    src, train, _, _ = _folder(tmp_path)
    break_it(src, train[5])
    code, out = _import(tmp_path, src)
    err = capsys.readouterr().err
    assert code != 0 and problem in err and "nothing written" in err
    assert (train[5] in err) or ("ghost" in err)
    assert not any(path.exists() for path in out.values())


def test_an_unknown_depth_asks_for_the_spacing(tmp_path, capsys):
    src, _, _, _ = _folder(tmp_path, depth=30)
    assert _import(tmp_path, src)[0] != 0 and "--spacing" in capsys.readouterr().err
    code, out = _import(tmp_path, src, "--spacing", "1.0")
    assert code == 0 and json.loads(out["manifest"].read_text())["spacing"] == [1.0] * 3


def test_vnet_is_uamts_network():
    five = VNet(3, 1, 2, [16, 32, 64, 128, 256], dropout=0.5)
    assert count_parameters(five) == 9_448_866  # UA-MT's VNet(n_filters=16, batchnorm): 9.45M
    four = VNet(3, 1, 2, [16, 32, 64, 128], dropout=0.5)
    assert four(torch.zeros(1, 1, 16, 16, 8)).shape == (1, 2, 16, 16, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        four(torch.zeros(1, 1, 12, 16, 8))
    with pytest.raises(ConfigError, match="data.patch_size"):
        load_config("supervised", "la_half", ["data.patch_size=[60,56,40]"])
    cfg = load_config("unimatch", "la_half")  # the feature stream's hook finds the bottleneck
    net = build_backbone(cfg.model, 3, 1, 2)
    scale = torch.zeros(1, 128, 1, 1, 1)
    assert net.forward_features(torch.zeros(1, 1, 16, 16, 8)).bottleneck.shape[1] == 128
    assert net.forward_scaled(torch.zeros(1, 1, 16, 16, 8), scale).shape == (1, 2, 16, 16, 8)


def test_la_protocol_presets():
    cfg = load_config("mean_teacher", "la_half")
    assert cfg.protocol == "la_cpu" and cfg.model.arch == "vnet" and list(cfg.data.patch_size) == [56, 56, 40]
    assert (cfg.data.labeled_batch_size, cfg.data.unlabeled_batch_size, cfg.trainer.max_steps) == (2, 2, 4000)
    uamt = load_config("mean_teacher", "la_half", ["protocol=uamt"])
    assert list(uamt.data.patch_size) == [112, 112, 80] and list(uamt.eval.sw_stride) == [18, 18, 4]
    assert uamt.trainer.max_steps == 6000 and len(uamt.model.channels) == 5


def test_step_schedule_is_uamts():
    factor = [learning_rate_factor(s, 6000, 0, "step", 0.9, step_fraction=2500 / 6000, step_gamma=0.1)
              for s in (0, 2499, 2500, 4999, 5000, 5999)]
    assert factor == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_window_overlap_gives_monai_the_stride():
    from monai.inferers.utils import _get_scan_interval
    overlap = window_overlap([112, 112, 80], [18, 18, 4])
    assert _get_scan_interval((200, 140, 88), (112, 112, 80), 3, overlap) == (18, 18, 4)
    assert window_overlap([56], [56]) == [0.0]


def test_data_roots_separated_by_colons_find_the_dataset(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    (second / "la").mkdir(parents=True)
    first.mkdir()
    cfg = load_config("supervised", "hippocampus", [f"data.root={first}:{second}"])
    assert data_root(cfg, "la") == second and data_root(cfg, "other") == first
    monkeypatch.setenv("SSL_BENCH_DATA_ROOT", f"{first}:{second}")
    assert data_root(load_config("supervised", "hippocampus"), "la") == second


def test_data_accepts_a_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text((PROJECT_ROOT / "experiments" / "data" / "la_half.yaml").read_text())
    assert load_config("supervised", str(path)).data.name == "la_half"
    with pytest.raises(ConfigError, match="no such data config"):
        load_config("supervised", str(tmp_path / "missing.yaml"))
