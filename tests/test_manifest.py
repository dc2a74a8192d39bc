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


# ---- patients ------------------------------------------------------------------------------------------------------
def _two_frames_per_patient(tmp_path, n_patients=20, patient_field=False):
    """An MSD-style dataset.json of ACDC's layout: two images (end-diastole, end-systole) per patient."""
    ds = tmp_path / "Task27_Frames"
    ds.mkdir()
    training = []
    for p in range(1, n_patients + 1):
        for frame in (1, 12):
            name = f"patient{p:03d}_frame{frame:02d}"
            entry = {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
            for path in (ds / entry["image"], ds / entry["label"]):  # import-msd checks the files are there
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            if patient_field:
                entry["patient"] = f"P{p}"
            training.append(entry)
    (ds / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "rv", "2": "myo", "3": "lv"},
                                                 "training": training}))
    return ds


def _sets_by_patient(m):
    patient_of = m.patient_of
    return [{patient_of[c] for c in ids} for ids in (m.test, m.validation, m.pool)]


def test_import_msd_keeps_a_patients_images_in_one_set(tmp_path):
    """Regression (issue 28): a seeded split by image put frames of one patient in test and in the training pool."""
    m = import_msd(_two_frames_per_patient(tmp_path), patient_regex=r"patient\d+")
    test, validation, pool = _sets_by_patient(m)
    assert not (test & validation or test & pool or validation & pool)
    assert (len(test), len(validation), len(pool)) == (4, 2, 14)  # 20% / 10% of the 20 patients
    assert len(m.test) == 8 and m.case_by_id["patient001_frame12"].patient == "patient001"
    reloaded = load_manifest(m.save(tmp_path / "frames.json"))
    assert reloaded.patient_of == m.patient_of
    for draw in (0, 1):  # and the training pool's labeled / unlabeled split too
        s = split_pool(reloaded.pool, draw=draw, n_labeled=3, patient_of=reloaded.patient_of)
        assert len(s.labeled) == 6 and not {c[:10] for c in s.labeled} & {c[:10] for c in s.unlabeled}


def test_import_msd_reads_patients_from_a_dataset_json_field(tmp_path):
    m = import_msd(_two_frames_per_patient(tmp_path, patient_field=True))
    assert m.case_by_id["patient007_frame01"].patient == "P7"
    test, validation, pool = _sets_by_patient(m)
    assert not (test & validation or test & pool or validation & pool)


def test_import_msd_patient_errors_name_the_file(tmp_path):
    ds = _two_frames_per_patient(tmp_path)
    with pytest.raises(ManifestError, match=r"patient001_frame01.nii.gz: .*no match for the patient pattern"):
        import_msd(ds, patient_regex=r"subject\d+")
    with pytest.raises(ManifestError, match="not a valid regular expression"):
        import_msd(ds, patient_regex=r"patient(\d+")
    meta = json.loads((ds / "dataset.json").read_text())
    meta["training"][3]["patient"] = "P2"
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError, match="1 of 40 training entries have 'patient'"):
        import_msd(ds)


def test_a_manifest_whose_sets_share_a_patient_is_refused(tmp_path):
    cases = [{"id": f"p{i // 2}_f{i % 2}", "image": f"img/{i}.nii.gz", "label": f"lab/{i}.nii.gz",
              "patient": f"p{i // 2}"} for i in range(8)]
    path = _write(tmp_path, cases=cases, test=["p0_f0"], validation=["p1_f0", "p1_f1"])
    with pytest.raises(ManifestError, match=r"1 patient\(s\) have images in more than one .*p0 \(test, training "
                                            r"pool\)"):
        load_manifest(path)
    path = _write(tmp_path, cases=cases, test=["p0_f0", "p0_f1"], validation=["p1_f0", "p1_f1"])
    assert load_manifest(path).pool == ["p2_f0", "p2_f1", "p3_f0", "p3_f1"]
    path = _write(tmp_path, cases=[{**cases[0], "patient": 3}], test=[], validation=[])
    with pytest.raises(ManifestError, match="'patient' must be a non-empty string"):
        load_manifest(path)
