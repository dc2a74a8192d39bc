import json

import pytest

from ssl_bench.data.manifest import ManifestError, import_msd, load_manifest
from ssl_bench.data.splits import split_pool
from conftest import PROJECT_ROOT, SHARED_DATA


def _write(tmp_path, **changes):
    raw = {"name": "toy", "directory": "toy", "labels": ["background", "organ"],
           "cases": [{"id": f"c{i}", "image": f"img/c{i}.nii.gz", "label": f"lab/c{i}.nii.gz"} for i in range(6)],
           "test": ["c0"], "validation": ["c1"]}
    raw.update(changes)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    return path


def test_valid_manifest_and_pool(tmp_path):
    m = load_manifest(_write(tmp_path))
    assert m.num_classes == 2 and m.foreground_labels == ["organ"]
    assert m.pool == ["c2", "c3", "c4", "c5"]
    assert m.dataset_dir("/data").as_posix() == "/data/toy"


@pytest.mark.parametrize("changes, message", [
    ({"labels": ["background"]}, "labels"),
    ({"test": ["nope"]}, "not in 'cases'"),
    ({"validation": ["c0"]}, "both test and validation"),
    ({"cases": [{"id": "a", "image": "x"}, {"id": "a", "image": "y"}], "test": [], "validation": []}, "duplicate"),
    ({"extra": 1}, "unknown key"),
    ({"cases": [{"image": "x"}]}, "case #0"),
])
def test_invalid_manifests_name_the_file_and_problem(tmp_path, changes, message):
    path = _write(tmp_path, **changes)
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(path)
    assert str(path) in str(err.value)


def test_missing_keys_and_bad_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ManifestError, match="missing required key"):
        load_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "absent.json")


def _msd_folder(ds, n_cases, skip_files=()):
    """An MSD-style folder whose dataset.json lists ``n_cases`` training pairs, their (empty) files present."""
    training = [{"image": f"./imagesTr/toy_{i:03d}.nii.gz", "label": f"./labelsTr/toy_{i:03d}.nii.gz"}
                for i in range(n_cases)]
    for entry in training:
        for path in entry.values():
            if path not in skip_files:
                (ds / path).parent.mkdir(parents=True, exist_ok=True)
                (ds / path).touch()
    (ds / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Liver", "2": "Tumour"},
                                                 "training": training}))
    return training


def test_import_msd_round_trip(tmp_path):
    ds = tmp_path / "Task99_Toy"
    ds.mkdir()
    _msd_folder(ds, 20)
    m = import_msd(ds, test_fraction=0.2, val_fraction=0.1, seed=0)
    assert m.name == "toy" and m.directory == "Task99_Toy"
    assert m.labels == ["background", "liver", "tumour"]
    assert len(m.test) == 4 and len(m.validation) == 2 and len(m.pool) == 14
    assert m.cases[0].image == "imagesTr/toy_000.nii.gz"
    reloaded = load_manifest(m.save(tmp_path / "out.json"))
    assert reloaded.cases == m.cases and reloaded.test == m.test


def test_import_msd_errors(tmp_path):
    with pytest.raises(ManifestError, match="dataset.json"):
        import_msd(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "2": "x"}, "training": []}))
    with pytest.raises(ManifestError, match="label indices"):
        import_msd(tmp_path)


def test_import_msd_names_every_training_entry_without_a_label_or_a_file(tmp_path):
    """Regression: an entry without "label" was a bare KeyError; a missing file went unnoticed until training."""
    training = _msd_folder(tmp_path, 6, skip_files=["./labelsTr/toy_002.nii.gz"])
    training[4] = {"image": "./imagesTr/toy_004.nii.gz"}
    training.append({"image": "./imagesTr/toy_000.nii.gz", "label": "./labelsTr/toy_000.nii.gz"})
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "training": training}))
    with pytest.raises(ManifestError) as err:
        import_msd(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'dataset.json'}: 3 problem(s) in 'training'")
    assert "training entry #2: labelsTr/toy_002.nii.gz not found in" in message
    assert 'training entry #4 {"image": "./imagesTr/toy_004.nii.gz"} has no label' in message
    assert "case id toy_000 comes from more than one training entry" in message
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "training": {"image": "x"}}))
    with pytest.raises(ManifestError, match="'training' must be a list"):
        import_msd(tmp_path)


def test_committed_hippocampus_manifest_protocol():
    m = load_manifest(PROJECT_ROOT / "data_manifests" / "hippocampus.json")
    assert len(m.cases) == 260 and len(m.test) == 52 and len(m.validation) == 26 and len(m.pool) == 182
    assert m.labels == ["background", "anterior", "posterior"]
    held_out = set(m.test) | set(m.validation)
    for frac in (0.05, 0.1, 0.2, 1.0):
        s = split_pool(m.pool, frac, 0)
        assert not held_out & (set(s.labeled) | set(s.unlabeled)), "val/test must never be trained on"
    if (SHARED_DATA / "Task04_Hippocampus").is_dir():
        regenerated = import_msd(SHARED_DATA / "Task04_Hippocampus", name="hippocampus")
        assert regenerated.test == m.test and regenerated.validation == m.validation
