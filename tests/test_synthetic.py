import os
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from ssl_bench.config import ConfigError, load_config
from ssl_bench.data import synthetic
from ssl_bench.data.dataset import resolve_dataset
from ssl_bench.data.manifest import load_manifest, split_held_out
from ssl_bench.data.synthetic import SyntheticSpec, ensure_synthetic, generate_synthetic

# Small but with four organs and anisotropic spacing, so size ratios and affines are meaningful.
SPEC = SyntheticSpec(n_cases=8, shape=(20, 20, 20), n_organs=4, spacing=(0.8, 0.8, 2.5), name="tiny")
SMALL_SPEC = SyntheticSpec(n_cases=4, shape=(16, 16, 16), n_organs=2, name="small")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    manifest = generate_synthetic(tmp_path_factory.mktemp("synthetic"), spec=SPEC)
    return manifest, [read_case(manifest, case) for case in manifest.cases]


def read_case(manifest, case):
    """(image array, label array, image nifti, label nifti) with the arrays in their stored dtype."""
    root = manifest.dataset_dir(manifest.path.parent)
    image, label = nib.load(root / case.image), nib.load(root / case.label)
    return np.asanyarray(image.dataobj), np.asanyarray(label.dataobj), image, label


def best_threshold_accuracy(values, is_foreground):
    """Accuracy of the best single intensity threshold (either polarity) separating foreground voxels."""
    order = np.argsort(values, kind="stable")
    foreground = is_foreground[order]
    # Cut before position i: background below the cut plus foreground above it is classified right.
    background_below = np.concatenate([[0], np.cumsum(~foreground)])
    foreground_above = foreground.sum() - np.concatenate([[0], np.cumsum(foreground)])
    correct = background_below + foreground_above
    return max(correct.max(), (len(values) - correct).max()) / len(values)


def test_manifest_lists_every_case_with_labels_and_held_out_splits(dataset):
    manifest, _ = dataset
    assert load_manifest(manifest.path) == manifest
    assert manifest.directory == "tiny"
    assert manifest.labels == ["background", "organ1", "organ2", "organ3", "organ4"]
    assert manifest.spacing == [0.8, 0.8, 2.5]
    ids = [f"tiny_{i:03d}" for i in range(8)]
    assert [case.id for case in manifest.cases] == ids
    assert (manifest.test, manifest.validation) == split_held_out(ids, 0.25, 0.125, 0)
    assert len(manifest.test) == 2 and len(manifest.validation) == 1
    assert not set(manifest.test) & set(manifest.validation)
    assert len(manifest.pool) == 5


def test_every_case_has_every_organ_and_only_known_labels(dataset):
    _, cases = dataset
    for _, label, _, _ in cases:
        assert label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 1, 2, 3, 4}
        assert np.bincount(label.ravel()).min() >= 4


def test_organs_shrink_from_first_to_last(dataset):
    _, cases = dataset
    mean_sizes = np.mean([np.bincount(label.ravel(), minlength=5)[1:] for _, label, _, _ in cases], axis=0)
    assert np.all(np.diff(mean_sizes) < 0), mean_sizes
    assert mean_sizes[0] / mean_sizes[-1] > 10, mean_sizes


def test_image_is_finite_float32_on_the_label_grid(dataset):
    _, cases = dataset
    for image, label, image_nifti, label_nifti in cases:
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert image.shape == label.shape == SPEC.shape
        np.testing.assert_array_equal(image_nifti.affine, label_nifti.affine)
        np.testing.assert_allclose(np.diag(image_nifti.affine), [0.8, 0.8, 2.5, 1.0])
        np.testing.assert_allclose(image_nifti.header.get_zooms(), SPEC.spacing)
        assert not image_nifti.affine[:3, 3].any()


def test_intensity_threshold_does_not_segment_perfectly(dataset):
    _, cases = dataset
    images = np.concatenate([image.ravel() for image, _, _, _ in cases])
    foreground = np.concatenate([label.ravel() > 0 for _, label, _, _ in cases])
    misclassified = (1 - best_threshold_accuracy(images, foreground)) * len(images)
    # Intensity is informative (far better than calling everything background)...
    assert misclassified < 0.5 * foreground.sum()
    # ...but the best threshold still gets a share of the organ voxels wrong.
    assert misclassified > 0.01 * foreground.sum()


def test_same_spec_gives_identical_arrays_and_another_seed_differs(tmp_path):
    first = generate_synthetic(tmp_path / "a", spec=SMALL_SPEC)
    again = generate_synthetic(tmp_path / "b", spec=SMALL_SPEC)
    reseeded = generate_synthetic(tmp_path / "c", spec=replace(SMALL_SPEC, seed=1))
    for case_a, case_b, case_c in zip(first.cases, again.cases, reseeded.cases):
        image_a, label_a, _, _ = read_case(first, case_a)
        image_b, label_b, _, _ = read_case(again, case_b)
        image_c, label_c, _, _ = read_case(reseeded, case_c)
        assert image_a.tobytes() == image_b.tobytes() and label_a.tobytes() == label_b.tobytes()
        assert not np.array_equal(label_a, label_c) and not np.array_equal(image_a, image_c)


def test_2d_spec_writes_2d_arrays(tmp_path):
    spec = SyntheticSpec(n_cases=4, shape=(24, 20), spacing=(0.7, 0.9), n_organs=3)
    manifest = generate_synthetic(tmp_path, spec=spec)
    for case in manifest.cases:
        image, label, image_nifti, _ = read_case(manifest, case)
        assert image.shape == label.shape == (24, 20)
        assert set(np.unique(label)) == {0, 1, 2, 3}
        np.testing.assert_allclose(image_nifti.header.get_zooms(), (0.7, 0.9))


# Small separate organs in a large volume (organ_ratios, organ_gap): nominal shares 4%, 1.26% and 0.4%, 2 voxels apart.
SEPARATE_SPEC = SyntheticSpec(n_cases=6, shape=(32, 32, 32), n_organs=3, organ_ratios=(0.04, 0.004), organ_gap=2,
                              name="separate")


def test_separate_organs_keep_their_share_of_the_volume_and_their_distance(tmp_path):
    manifest = generate_synthetic(tmp_path, spec=SEPARATE_SPEC)
    gap, shares = SEPARATE_SPEC.organ_gap, []
    for case in manifest.cases:
        _, label, _, _ = read_case(manifest, case)
        shares.append(np.bincount(label.ravel(), minlength=4)[1:] / label.size)
        for organ in (1, 2, 3):
            # More than `gap` voxels from every other organ and from the border: separate, none cut by the border.
            distance = distance_transform_edt(np.pad(label != organ, 1, constant_values=False))[1:-1, 1:-1, 1:-1]
            assert distance[(label > 0) & (label != organ)].min() > gap
            border = distance_transform_edt(np.pad(np.ones_like(label, bool), 1, constant_values=False))[1:-1, 1:-1,
                                                                                                        1:-1]
            assert border[label == organ].min() > gap
    mean_share = np.mean(shares, axis=0)
    nominal = np.geomspace(0.04, 0.004, 3)
    assert np.all((0.7 * nominal < mean_share) & (mean_share < 1.4 * nominal)), mean_share


def test_the_default_layout_lets_organs_touch(dataset):
    _, cases = dataset  # SPEC: no organ_gap
    touching = [np.any((label[1:] > 0) & (label[:-1] > 0) & (label[1:] != label[:-1])) for _, label, _, _ in cases]
    assert any(touching)


def test_separate_organs_that_cannot_fit_are_an_error_naming_the_gap(tmp_path):
    with pytest.raises(RuntimeError, match="organ_gap 6"):
        generate_synthetic(tmp_path, spec=replace(SEPARATE_SPEC, shape=(20, 20, 20), organ_ratios=(0.1, 0.05),
                                                  organ_gap=6))


def test_the_data_config_hands_the_organ_options_to_the_generator(tmp_path):
    overrides = ["data.synthetic.n_cases=6", "data.synthetic.shape=[32,32,32]", "data.synthetic.organ_ratios=[0.04,0.004]",
                 "data.synthetic.organ_gap=2", "data.synthetic.n_organs=3", f"data.cache_dir={tmp_path}"]
    manifest, _ = resolve_dataset(load_config("supervised", "synthetic", overrides))
    assert "organ_ratios=(0.04, 0.004), organ_gap=2" in manifest.source
    with pytest.raises(ConfigError, match="data.synthetic: organ_ratios"):
        resolve_dataset(load_config("supervised", "synthetic", overrides + ["data.synthetic.organ_ratios=[0.001,0.01]"]))


def test_interrupted_regeneration_leaves_no_manifest(tmp_path, monkeypatch):
    generate_synthetic(tmp_path, spec=SMALL_SPEC)

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_save_nifti", fail)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path, spec=SMALL_SPEC)
    assert not (tmp_path / "manifest.json").exists()


def file_mtimes(folder):
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*")}


def test_ensure_synthetic_reuses_the_cached_dataset(tmp_path, monkeypatch):
    manifest_path = ensure_synthetic(tmp_path, spec=SMALL_SPEC)
    assert manifest_path.parent.parent == tmp_path and manifest_path.parent.name.startswith("small-")
    assert len(load_manifest(manifest_path).cases) == 4
    mtimes = file_mtimes(manifest_path.parent)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "generate_synthetic", fail)
    same_spec_from_lists = replace(SMALL_SPEC, shape=[16, 16, 16], spacing=[1, 1, 1])
    assert ensure_synthetic(tmp_path, spec=same_spec_from_lists) == manifest_path
    assert file_mtimes(manifest_path.parent) == mtimes
    monkeypatch.undo()
    other = ensure_synthetic(tmp_path, spec=replace(SMALL_SPEC, seed=1))
    assert other != manifest_path and other.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([manifest_path.parent.name, other.parent.name])


def test_ensure_synthetic_regenerates_a_folder_without_manifest(tmp_path):
    manifest_path = ensure_synthetic(tmp_path, spec=SMALL_SPEC)
    manifest_path.unlink()
    (manifest_path.parent / "leftover.txt").write_text("from an interrupted run")
    assert ensure_synthetic(tmp_path, spec=SMALL_SPEC) == manifest_path
    assert len(load_manifest(manifest_path).cases) == 4
    assert not (manifest_path.parent / "leftover.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [manifest_path.parent.name]


def test_ensure_synthetic_uses_the_winners_folder_after_losing_the_race(tmp_path, monkeypatch):
    real_generate = synthetic.generate_synthetic
    final_dir = tmp_path / f"small-{synthetic.spec_hash(SMALL_SPEC)}"

    def generate_while_another_process_finishes_first(out_dir, *, spec):
        winner_tmp = tmp_path / "winner"
        real_generate(winner_tmp, spec=spec)
        (winner_tmp / "winner.txt").write_text("")
        os.rename(winner_tmp, final_dir)
        return real_generate(out_dir, spec=spec)

    monkeypatch.setattr(synthetic, "generate_synthetic", generate_while_another_process_finishes_first)
    assert ensure_synthetic(tmp_path, spec=SMALL_SPEC) == final_dir / "manifest.json"
    assert (final_dir / "winner.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [final_dir.name]  # the loser's temp folder is gone


@pytest.mark.parametrize("fields, problem", [
    ({"n_organs": 0}, "n_organs"),
    ({"n_organs": 9}, "n_organs"),
    ({"shape": (16, 16, 16, 16), "spacing": (1, 1, 1, 1)}, "shape"),
    ({"shape": (16, 16, 16), "spacing": (1, 1)}, "spacing"),
    ({"shape": (8, 16, 16)}, "at least 16"),
    ({"spacing": (1, 0, 1)}, "spacing must be positive"),
    ({"n_cases": 4, "test_fraction": 0.5, "val_fraction": 0.4}, "too few"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"name": "a/b"}, "name"),
    ({"organ_ratios": (0.05,)}, "organ_ratios must be"),
    ({"organ_ratios": (0.001, 0.01)}, "organ_ratios must be"),
    ({"n_organs": 8, "organ_ratios": (0.2, 0.05)}, "would fill more than 40%"),
    ({"organ_gap": -1}, "organ_gap must be non-negative"),
])
def test_invalid_specs_raise_value_error_naming_the_problem(fields, problem):
    with pytest.raises(ValueError, match=problem):
        SyntheticSpec(**fields)
