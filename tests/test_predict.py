"""`ssl-bench predict` on a trained 2D run (slice by slice, as evaluation): its checkpoint choices, its network choice,
checkpoints written before they carried hyperparameters, and bad input refused before anything is written.
Every method's checkpoint and prediction: tests/test_methods.py (test_a_few_steps_end_to_end_through_the_cli)."""

import nibabel as nib
import numpy as np
import pytest
import torch

from ssl_bench.cli import main
from ssl_bench.predict import load_module, output_name
from ssl_bench.data.dataset import resolve_dataset
from conftest import TINY


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory, synthetic_cache):
    """A Mean Teacher run in 2D mode (its test predictions saved), and its first test case's image and label map."""
    root = tmp_path_factory.mktemp("predict")
    args = ["train", "--method", "mean_teacher", "--data", "synthetic", f"run.runs_dir={root}",
            f"data.cache_dir={synthetic_cache}", *TINY, "data.fraction=0.5", "data.spatial_dims=2",
            "data.patch_size=[16,16]", "trainer.max_steps=2", "trainer.val_every_n_steps=1",
            "eval.save_predictions=true"]
    assert main(args) == 0
    run = root / "synthetic" / "mean_teacher" / "frac0.5" / "draw0"
    manifest, data_root = resolve_dataset(load_module(run).cfg)
    case = manifest.case_by_id[manifest.test[0]]
    return run, manifest.dataset_dir(data_root) / case.image, run / "predictions" / f"{case.id}.nii.gz"


def _predicted(out, image):
    return nib.load(str(out / output_name(image)))


def test_a_2d_run_predicts_what_it_evaluated_on_the_image_grid(run_2d, tmp_path, capsys):
    run, image, evaluated = run_2d
    assert main(["predict", str(run), str(image), "--out", str(tmp_path)]) == 0
    assert str(tmp_path / output_name(image)) in capsys.readouterr().out
    predicted, reference = _predicted(tmp_path, image), nib.load(str(image))
    assert predicted.shape == reference.shape and np.allclose(predicted.affine, reference.affine)
    assert np.allclose(predicted.header.get_zooms(), reference.header.get_zooms())
    assert np.array_equal(np.asarray(predicted.dataobj), np.asarray(nib.load(str(evaluated)).dataobj))


def test_checkpoint_and_network_can_be_chosen(run_2d, tmp_path, capsys):
    run, image, _ = run_2d
    module = load_module(run, "best")
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))[0]
    saved = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[key]) for key, value in module.state_dict().items())
    for options, out in ((["--checkpoint", "best"], "best"), (["--checkpoint", str(best), "--model", "student"], "s")):
        assert main(["predict", str(run), str(image), "--out", str(tmp_path / out), *options]) == 0
    student = load_module(run, str(best)).predict_labels("student", _input(image))[0].numpy()
    assert np.array_equal(np.asarray(_predicted(tmp_path / "s", image).dataobj), student)
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "x"), "--model", "ensemble"]) == 2
    assert "--model ensemble: mean_teacher evaluates student, teacher" in capsys.readouterr().err


def _input(image):
    from ssl_bench.data.datamodule import inference_transforms
    return torch.as_tensor(inference_transforms()({"image": str(image)})["image"])[None]


def test_a_checkpoint_without_hyperparameters_is_rebuilt_from_its_run_folder(run_2d, tmp_path):
    run, image, evaluated = run_2d
    old = tmp_path / "old.ckpt"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]
    torch.save(checkpoint, old)
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "out"), "--checkpoint", str(old)]) == 0
    assert np.array_equal(np.asarray(_predicted(tmp_path / "out", image).dataobj),
                          np.asarray(nib.load(str(evaluated)).dataobj))


def test_bad_input_is_refused_before_anything_is_written(run_2d, tmp_path, capsys):
    run, image, _ = run_2d
    out = tmp_path / "out"
    out.mkdir()
    kept = out / output_name(image)
    kept.write_bytes(b"an earlier result")
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.float32), np.eye(4)), str(four_d))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    same_name = other_dir / four_d.name
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4)), str(same_name))
    missing, text = tmp_path / "missing.nii.gz", tmp_path / "notes.txt"
    args = ["predict", str(run), str(image), str(four_d), str(broken), str(same_name), str(missing), str(text),
            "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "6 of 6 inputs cannot be predicted" in err
    assert f"{kept} exists; pass --overwrite" in err
    assert f"{four_d}: image of shape (4, 4, 4, 2)" in err
    assert f"{broken}: cannot read as NIfTI" in err
    assert f"{same_name} and {four_d} would both be written" in err
    assert f"{missing}: no such file" in err and f"{text}: not a NIfTI file" in err
    assert sorted(p.name for p in out.iterdir()) == [kept.name] and kept.read_bytes() == b"an earlier result"
    assert main(["predict", str(run), str(image), "--out", str(out), "--overwrite"]) == 0
    assert kept.read_bytes() != b"an earlier result"
    assert main(["predict", str(tmp_path / "no_run"), str(image), "--out", str(tmp_path / "o")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
