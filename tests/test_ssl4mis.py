"""`ssl-bench data import-ssl4mis`: an SSL4MIS-layout folder (tests/ssl4mis_fixture.py, tiny h5 volumes; no ACDC
data) becomes NIfTI volumes, a manifest of SSL4MIS's split by patient and experiments/data/<name>.yaml; then a run on
it with SSL4MIS's labeled set (the first patients of its train list)."""

import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from ssl_bench.cli import main
from ssl_bench.config import PROJECT_ROOT
from ssl_bench.data.import_outputs import SSL4MIS_DATA_SETTINGS, data_config_text, default_paths, ssl4mis_comment
from ssl_bench.data.manifest import ManifestError, load_manifest
from ssl_bench.data.splits import split_pool
from ssl_bench.data.ssl4mis import ssl4mis_manifest
from ssl4mis_fixture import write_ssl4mis_folder
from conftest import TINY

# Train list in SSL4MIS's own (unsorted) order, as its train.list starts: patient099, patient038, patient050, ...
LISTS = {"train": [99, 38, 50, 4, 21, 60], "val": [12, 70], "test": [11, 13, 84]}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The fixture folder imported through the CLI into a data root (manifest and data config in the tmp folder)."""
    tmp = tmp_path_factory.mktemp("ssl4mis")
    src = write_ssl4mis_folder(tmp / "ACDC", LISTS, slices_list=True)
    paths = {"root": tmp / "root", "manifest": tmp / "acdc.json", "config": tmp / "acdc.yaml"}
    args = ["data", "import-ssl4mis", str(src), "--root", str(paths["root"]), "--out", str(paths["manifest"]),
            "--data-config", str(paths["config"])]
    assert main(args) == 0
    return src, paths, args


def test_the_manifest_is_ssl4mis_split_by_patient(imported):
    src, paths, _ = imported
    m = load_manifest(paths["manifest"])
    names = {k: [f"patient{p:03d}_frame{f:02d}" for p in v for f in (1, 2)] for k, v in LISTS.items()}
    assert m.test == names["test"] and m.validation == names["val"]
    assert m.pool == names["train"]  # in the train list's order
    assert m.labels == ["background", "rv", "myo", "lv"] and m.spacing_unit == "voxel"
    assert m.case_by_id["patient038_frame02"].patient == "patient038"
    # SSL4MIS's labeled set: the first N patients of its list, both frames each
    s = split_pool(m.pool, n_labeled=2, patient_of=m.patient_of, selection="first")
    assert s.labeled_patients == ["patient099", "patient038"] and len(s.labeled) == 4


def test_volumes_are_converted_exactly_with_unit_spacing(imported):
    src, paths, _ = imported
    with h5py.File(src / "data" / "patient050_frame02.h5") as f:
        image, label = np.asarray(f["image"]), np.asarray(f["label"])
    nifti = nib.load(paths["root"] / "acdc" / "imagesTr" / "patient050_frame02.nii.gz")
    assert nifti.shape == (40, 36, 4) and nifti.header.get_zooms() == (1.0, 1.0, 1.0)  # slices last: slice_axis 2
    assert np.array_equal(np.asarray(nifti.dataobj), np.transpose(image, (1, 2, 0)))
    lab = np.asarray(nib.load(paths["root"] / "acdc" / "labelsTr" / "patient050_frame02.nii.gz").dataobj)
    assert np.array_equal(lab, np.transpose(label, (1, 2, 0))) and set(np.unique(lab)) == {0, 1, 2, 3}
    assert main(["data", "verify", "--data", "synthetic", "--root", str(paths["root"]), "data.name=acdc",
                 f"data.manifest={paths['manifest']}"]) == 0


def test_the_data_config_makes_the_dataset_usable_and_is_the_committed_one(imported):
    _, paths, _ = imported
    text = paths["config"].read_text()
    assert "spatial_dims: 2" in text and "patch_size:" in text and f"manifest: {paths['manifest']}" in text
    # experiments/data/acdc.yaml is what the import writes with its default paths, so re-importing keeps it
    committed = (PROJECT_ROOT / "experiments" / "data" / "acdc.yaml").read_text()
    manifest = load_manifest(paths["manifest"])
    assert committed == data_config_text(manifest, default_paths("acdc")["manifest"], SSL4MIS_DATA_SETTINGS,
                                         ssl4mis_comment(manifest))


def test_reimporting_is_harmless_and_nothing_is_replaced_silently(imported, capsys):
    src, paths, args = imported
    assert main(args) == 0  # the same content: nothing to refuse
    other = paths["config"].with_name("other.json")
    other.write_text("{}")
    assert main(args[:-4] + ["--out", str(other), "--data-config", str(paths["config"])]) == 1
    assert "other.json exists with other content; pass --overwrite" in capsys.readouterr().err
    assert other.read_text() == "{}"


def test_a_run_on_the_imported_data_with_ssl4mis_labeled_patients(imported, tmp_path, capsys):
    """2D slices, 2 labeled patients (the first of the train list): 4 labeled images; HD95 in voxels."""
    _, paths, _ = imported
    args = ["train", "--method", "mean_teacher", "--data", "synthetic", f"run.runs_dir={tmp_path}",
            "data.name=acdc", f"data.manifest={paths['manifest']}", f"data.root={paths['root']}",
            *[a for a in TINY if not a.startswith("data.")], "data.spatial_dims=2", "data.slice_axis=2",
            "data.patch_size=[32,32]", "data.n_labeled=2", "data.labeled_selection=first",
            "trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.enable_progress_bar=false"]
    assert main(args) == 0
    assert "mean_teacher on acdc, 2 labeled patients (the first listed), draw 0" in capsys.readouterr().out
    run = tmp_path / "acdc" / "mean_teacher" / "labeled2-first" / "draw0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["n_labeled_patients"], metrics["n_labeled"], metrics["n_unlabeled_patients"]) == (2, 4, 4)
    assert metrics["hd95_unit"] == "voxel" and metrics["n_test"] == 6 and metrics["fraction"] is None
    splits = json.loads((run / "splits.json").read_text())
    assert splits["labeled_patients"] == ["patient099", "patient038"]


def test_every_problem_is_reported_at_once_and_nothing_is_written(tmp_path):
    src = write_ssl4mis_folder(tmp_path / "ACDC", {"train": [1, 2, 3], "val": [4], "test": [5]}, shape=(2, 16, 16))
    with h5py.File(src / "data" / "patient002_frame01.h5", "a") as f:
        del f["label"]
    with h5py.File(src / "data" / "patient003_frame02.h5", "a") as f:
        f["label"][0, 0, 0] = 7
    (src / "data" / "patient004_frame01.h5").unlink()
    with pytest.raises(ManifestError) as err:
        ssl4mis_manifest(src)
    message = str(err.value)
    assert "3 problem(s) found, nothing written" in message
    assert "patient002_frame01.h5: no dataset 'label'" in message
    assert "patient003_frame02.h5: label values [7] outside the classes 0..3" in message
    assert "patient004_frame01.h5: not found" in message
    (src / "val.list").unlink()
    with pytest.raises(ManifestError, match=r"not an SSL4MIS dataset folder:\n  - .*val.list: not found"):
        ssl4mis_manifest(src)


def test_a_patient_in_two_lists_is_refused(tmp_path):
    src = write_ssl4mis_folder(tmp_path / "ACDC", {"train": [1, 2, 3], "val": [4], "test": [5]}, shape=(2, 16, 16))
    (src / "test.list").write_text("patient005_frame01\npatient005_frame02\npatient001_frame02\n")
    with pytest.raises(ManifestError, match="listed in both train and test"):
        ssl4mis_manifest(src)
    (src / "train.list").write_text("patient001_frame01\npatient002_frame01\npatient002_frame02\n")
    with pytest.raises(ManifestError, match=r"patient001 \(training pool, test\)"):
        ssl4mis_manifest(src)
