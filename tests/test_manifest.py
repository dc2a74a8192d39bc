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


def test_import_msd_round_trip(tmp_path):
    ds = tmp_path / "Task99_Toy"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "Liver", "2": "Tumour"},
        "training": [{"image": f"./imagesTr/toy_{i:03d}.nii.gz", "label": f"./labelsTr/toy_{i:03d}.nii.gz"}
                     for i in range(20)]}))
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
