import gzip
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import PROJECT_ROOT, TINY
from ssl_bench.data.manifest import DATA_ROOT_ENV, Case, Manifest, import_msd
from ssl_bench.data.verify import (
    DataVerificationError, Problem, describe_verification, verify_cases, verify_or_raise,
)

SHAPE = (8, 8, 8)
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PIXDIM_OFFSET = 76  # byte offset of pixdim[0..7] (float32) in a NIfTI-1 header


def write_nifti(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def write_with_stored_zooms(path, data, zooms):
    """nibabel refuses to write zero/negative pixdims, so patch them into the header bytes."""
    raw = bytearray(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    pixdim = np.frombuffer(raw, np.float32, 8, PIXDIM_OFFSET).copy()
    pixdim[1:4] = zooms
    raw[PIXDIM_OFFSET:PIXDIM_OFFSET + 32] = pixdim.tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def image_path(root, case_id):
    return root / "toy" / "imagesTr" / f"{case_id}.nii.gz"


def label_path(root, case_id):
    return root / "toy" / "labelsTr" / f"{case_id}.nii.gz"


def make_dataset(root, n_cases=3, spacing=(1.0, 1.0, 1.0)):
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    cases = []
    for i in range(n_cases):
        case_id = f"case_{i:03d}"
        write_nifti(image_path(root, case_id), rng.normal(size=SHAPE).astype(np.float32), affine)
        write_nifti(label_path(root, case_id), rng.integers(0, 3, SHAPE).astype(np.uint8), affine)
        cases.append(Case(case_id, f"imagesTr/{case_id}.nii.gz", f"labelsTr/{case_id}.nii.gz"))
    return Manifest(name="toy", directory="toy", labels=["background", "liver", "tumour"], cases=cases,
                    test=[], validation=[])


def single_problem(manifest, root):
    infos, problems = verify_cases(manifest, root)
    assert len(infos) == len(manifest.cases) - 1 and len(problems) == 1, problems
    return problems[0]


def test_clean_dataset_reports_shapes_and_spacings(tmp_path):
    manifest = make_dataset(tmp_path, spacing=(0.5, 0.75, 2.0))
    infos, problems = verify_cases(manifest, tmp_path)
    assert problems == []
    assert [i.case_id for i in infos] == ["case_000", "case_001", "case_002"]
    assert all(i.shape == SHAPE and i.spacing == (0.5, 0.75, 2.0) for i in infos)
    assert describe_verification(infos, problems) == "3 cases OK"


@pytest.mark.parametrize("image, label", [
    (np.zeros(SHAPE, np.uint8), np.full(SHAPE, 2.0, np.float32)),  # as in MSD Hippocampus
    (np.zeros(SHAPE + (4,), np.float32), np.ones(SHAPE, np.uint8)),  # multi-modal, channels last
])
def test_accepted_data_types_and_layouts(tmp_path, image, label):
    manifest = make_dataset(tmp_path, n_cases=1)
    write_nifti(image_path(tmp_path, "case_000"), image)
    write_nifti(label_path(tmp_path, "case_000"), label)
    infos = verify_or_raise(manifest, tmp_path)
    assert infos[0].shape == SHAPE and infos[0].spacing == (1.0, 1.0, 1.0)


def truncate_gzip(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    nib.load(path)  # the header still reads: only loading the data can catch this


@pytest.mark.parametrize("damage, bad_file, reason", [
    (lambda root: image_path(root, "case_001").unlink(), image_path, "file not found"),
    (lambda root: label_path(root, "case_001").unlink(), label_path, "file not found"),
    (lambda root: image_path(root, "case_001").write_bytes(b"definitely not NIfTI" * 20), image_path,
     "cannot be read as NIfTI"),
    (lambda root: truncate_gzip(image_path(root, "case_001")), image_path, "cannot be read as NIfTI"),
    (lambda root: write_nifti(label_path(root, "case_001"), np.zeros((8, 8, 7), np.uint8)), label_path,
     "label shape (8, 8, 7) differs from the image's (8, 8, 8)"),
    (lambda root: write_nifti(label_path(root, "case_001"), np.zeros(SHAPE, np.uint8),
                              np.array([[1, 0, 0, 5.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
     label_path, "affines differ in origin"),
    (lambda root: write_nifti(label_path(root, "case_001"), np.arange(512, dtype=np.int16).reshape(SHAPE) % 8),
     label_path, "label values {3, 4, 5, 6, 7} outside the declared labels 0..2"),
    (lambda root: write_nifti(label_path(root, "case_001"), np.full(SHAPE, 0.5, np.float32)), label_path,
     "512 label voxel(s) hold non-integer values (e.g. 0.5)"),
    (lambda root: write_nifti(image_path(root, "case_001"), np.where(np.eye(8, dtype=bool)[..., None], np.nan,
                                                                       np.ones(SHAPE, np.float32))),
     image_path, "64 image voxel(s) are NaN or inf"),
    (lambda root: write_nifti(image_path(root, "case_001"), np.full(SHAPE, np.inf, np.float32)), image_path,
     "512 image voxel(s) are NaN or inf"),
    (lambda root: write_with_stored_zooms(image_path(root, "case_001"), np.zeros(SHAPE, np.float32), [1, 0, 1]),
     image_path, "voxel spacing (1.0, 0.0, 1.0) must be finite, > 0 and < 100 mm"),
    (lambda root: write_with_stored_zooms(image_path(root, "case_001"), np.zeros(SHAPE, np.float32), [1, 1, -2]),
     image_path, "voxel spacing (1.0, 1.0, -2.0) must be finite"),
])
def test_each_defect_is_reported_against_its_file(tmp_path, damage, bad_file, reason):
    manifest = make_dataset(tmp_path)
    damage(tmp_path)
    problem = single_problem(manifest, tmp_path)
    assert problem.case_id == "case_001"
    assert problem.file == str(bad_file(tmp_path, "case_001"))
    assert reason in problem.reason
    assert str(problem).startswith(f"{problem.file} (case case_001): ")


def test_all_problems_are_reported_together(tmp_path):
    manifest = make_dataset(tmp_path, n_cases=5)
    image_path(tmp_path, "case_000").unlink()
    write_nifti(label_path(tmp_path, "case_002"), np.full(SHAPE, 9, np.uint8))
    write_nifti(image_path(tmp_path, "case_004"), np.full(SHAPE, np.nan, np.float32))
    write_nifti(label_path(tmp_path, "case_004"), np.full(SHAPE, 0.25, np.float32))
    infos, problems = verify_cases(manifest, tmp_path)
    assert [i.case_id for i in infos] == ["case_001", "case_003"]
    assert [p.case_id for p in problems] == ["case_000", "case_002", "case_004", "case_004"]
    with pytest.raises(DataVerificationError) as caught:
        verify_or_raise(manifest, tmp_path)
    message = str(caught.value)
    assert message.startswith("toy: 4 problem(s) found:\n  - ")
    assert caught.value.problems == problems
    for case_id, path in [("case_000", image_path), ("case_002", label_path), ("case_004", image_path),
                          ("case_004", label_path)]:
        assert str(path(tmp_path, case_id)) in message
    assert "4 problem(s)" in describe_verification(infos, problems)


def test_a_label_without_foreground_is_a_warning_naming_the_case_not_a_problem(tmp_path):
    manifest = make_dataset(tmp_path)
    write_nifti(label_path(tmp_path, "case_001"), np.zeros(SHAPE, np.uint8))
    infos, problems = verify_cases(manifest, tmp_path)
    assert problems == [] and [i.foreground_voxels == 0 for i in infos] == [False, True, False]
    assert describe_verification(infos, problems) == (
        "3 cases OK\nwarning: 1 case(s) whose label has no foreground (no structure to segment; Dice is undefined "
        "there): case_001")


def test_unknown_case_id_is_a_problem(tmp_path):
    manifest = make_dataset(tmp_path)
    infos, problems = verify_cases(manifest, tmp_path, ["case_002", "case_999"])
    assert [i.case_id for i in infos] == ["case_002"]
    assert problems == [Problem("case_999", str(tmp_path / "toy"), "case id not in manifest 'toy'")]


def test_missing_dataset_folder_points_at_the_data_root(tmp_path):
    manifest = make_dataset(tmp_path)
    with pytest.raises(DataVerificationError) as caught:
        verify_cases(manifest, tmp_path / "elsewhere")
    assert len(caught.value.problems) == 1
    assert DATA_ROOT_ENV in str(caught.value) and "data.root" in str(caught.value)
    assert str(tmp_path / "elsewhere" / "toy") in str(caught.value)


@pytest.mark.skipif(not (REAL_DATA / "Task04_Hippocampus").is_dir(), reason="MSD Hippocampus not available")
def test_real_hippocampus_sample_passes():
    manifest = import_msd(REAL_DATA / "Task04_Hippocampus")
    sample = [c.id for c in manifest.cases[::13]]
    infos = verify_or_raise(manifest, REAL_DATA, sample)
    assert len(infos) == len(sample) == 20
    assert all(len(i.shape) == 3 and i.spacing == (1.0, 1.0, 1.0) for i in infos)


def test_data_verify_refuses_a_manifest_whose_sets_share_a_patient(tmp_path, capsys):
    from ssl_bench.cli import main
    manifest = {"name": "frames", "directory": "frames", "labels": ["background", "lv"],
                "cases": [{"id": f"p{i // 2}_f{i % 2}", "image": f"{i}.nii.gz", "label": f"{i}_gt.nii.gz",
                           "patient": f"p{i // 2}"} for i in range(6)],
                "test": ["p0_f0"], "validation": ["p1_f0", "p1_f1"]}
    path = tmp_path / "frames.json"
    path.write_text(json.dumps(manifest))
    assert main(["data", "verify", "--data", "synthetic", "--root", str(tmp_path), "data.name=frames",
                 f"data.manifest={path}"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "p0 (test, training pool)" in err


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_verify_passes_args():
    """`make verify`'s own error suggests ARGS="data.root=..." (as make bench takes it); make verify ignored it."""
    dry = subprocess.run(["make", "-n", "verify", "DATA=hippocampus", "ARGS=data.root=/some/root"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert "ssl-bench data verify --data hippocampus data.root=/some/root" in dry.stdout


def test_verify_and_train_exit_alike_on_the_same_bad_file(tmp_path, synthetic_cache, capsys):
    """Bad data is exit status 2 in `ssl-bench data verify` (which said 1) as in `ssl-bench train`."""
    from ssl_bench.cli import main
    from ssl_bench.config import load_config
    from ssl_bench.data.manifest import load_manifest
    from ssl_bench.data.dataset import resolve_dataset
    _, generated = resolve_dataset(load_config("supervised", "synthetic", [*TINY, f"data.cache_dir={synthetic_cache}"]))
    root = tmp_path / "data"
    shutil.copytree(generated, root)
    manifest = load_manifest(root / "manifest.json")
    bad = root / manifest.directory / manifest.case_by_id[manifest.test[0]].image
    bad.write_bytes(b"not a nifti")
    data = ["data.name=mycopy", f"data.manifest={root / 'manifest.json'}", f"data.root={root}"]
    assert main(["data", "verify", "--data", "synthetic", *data]) == 2
    assert str(bad) in capsys.readouterr().out
    assert main(["train", "--data", "synthetic", f"run.runs_dir={tmp_path / 'runs'}", *TINY, *data]) == 2
    assert str(bad) in capsys.readouterr().err
