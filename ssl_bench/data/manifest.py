"""Dataset manifests: which cases a dataset has, where their files are, and the fixed test/val split.

A manifest is JSON. Paths are relative to ``<data root>/<directory>``, so the manifest can be committed
without any data and the same file works on every machine::

    {
      "name": "hippocampus",
      "directory": "Task04_Hippocampus",
      "labels": ["background", "anterior", "posterior"],
      "spacing": [1.0, 1.0, 1.0],
      "cases": [{"id": "hippocampus_001", "image": "imagesTr/hippocampus_001.nii.gz",
                 "label": "labelsTr/hippocampus_001.nii.gz"}, ...],
      "test": ["hippocampus_004", ...],
      "validation": ["hippocampus_017", ...],
      "split_seed": 0
    }

A case may name its ``patient`` (subject): several images of one patient (ACDC's two frames, time points,
sequences) then stay together in test, validation or the training pool, and in the labeled or unlabeled set
(ssl_bench/data/splits.py); a manifest whose sets share a patient is refused. Without it each case is its own
patient. ``spacing_unit`` is "mm", or "voxel" for images stored without their spacing (HD95 is then in voxels).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ssl_bench.data.splits import patients_of
from ssl_bench.utils.errors import ExplainedError
from ssl_bench.utils.io import atomic_write_text

DATA_ROOT_ENV = "SSL_BENCH_DATA_ROOT"
# How many problems of a dataset.json an error lists (they are counted all the same).
MAX_LISTED_PROBLEMS = 20
SPACING_UNITS = ("mm", "voxel")


class ManifestError(ExplainedError, ValueError):
    """A manifest that cannot be used; the message names the file and the problem."""


@dataclass
class Case:
    id: str
    image: str
    label: Optional[str] = None
    # The patient (subject) the image belongs to; None: the case is its own patient.
    patient: Optional[str] = None


@dataclass
class Manifest:
    name: str
    directory: str
    labels: List[str]
    cases: List[Case]
    test: List[str]
    validation: List[str]
    spacing: Optional[List[float]] = None
    split_seed: int = 0
    source: str = ""
    license: str = ""
    # "mm", or "voxel" where the files carry no spacing (e.g. SSL4MIS's h5 volumes): distances are then in voxels.
    spacing_unit: str = "mm"
    path: Optional[Path] = field(default=None, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.labels)

    @property
    def foreground_labels(self) -> List[str]:
        return self.labels[1:]

    @property
    def case_by_id(self) -> dict:
        return {c.id: c for c in self.cases}

    @property
    def pool(self) -> List[str]:
        """Training pool: every case that is neither test nor validation, in manifest order."""
        held_out = set(self.test) | set(self.validation)
        return [c.id for c in self.cases if c.id not in held_out]

    @property
    def patient_of(self) -> Dict[str, str]:
        """{case id: its patient}; a case without a patient is its own."""
        return {c.id: c.patient or c.id for c in self.cases}

    def dataset_dir(self, data_root: str | os.PathLike) -> Path:
        return Path(data_root) / self.directory

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path")
        for case in d["cases"]:  # optional keys only where they say something, so older manifests stay as written
            if case["patient"] is None:
                del case["patient"]
        if d["spacing_unit"] == "mm":
            del d["spacing_unit"]
        return json.dumps(d, indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path


def load_manifest(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object at the top level")
    missing = [k for k in ("name", "directory", "labels", "cases", "test", "validation") if k not in raw]
    if missing:
        raise ManifestError(f"{path}: missing required key(s) {', '.join(missing)}")
    known = {"name", "directory", "labels", "cases", "test", "validation", "spacing", "split_seed", "source", "license",
             "spacing_unit"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ManifestError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if not isinstance(raw["labels"], list) or len(raw["labels"]) < 2:
        raise ManifestError(f"{path}: 'labels' must list background and at least one foreground class")
    cases = []
    for i, c in enumerate(raw["cases"]):
        if not isinstance(c, dict) or "id" not in c or "image" not in c:
            raise ManifestError(f"{path}: case #{i} needs at least 'id' and 'image'")
        patient = c.get("patient")
        if patient is not None and not (isinstance(patient, str) and patient):
            raise ManifestError(f"{path}: case {c['id']!r}: 'patient' must be a non-empty string, got {patient!r}")
        cases.append(Case(id=str(c["id"]), image=c["image"], label=c.get("label"), patient=patient))
    if raw.get("spacing_unit", "mm") not in SPACING_UNITS:
        raise ManifestError(f"{path}: 'spacing_unit' must be one of {', '.join(SPACING_UNITS)}, "
                            f"got {raw['spacing_unit']!r}")
    manifest = Manifest(
        name=raw["name"], directory=raw["directory"], labels=list(raw["labels"]), cases=cases,
        test=list(raw["test"]), validation=list(raw["validation"]), spacing=raw.get("spacing"),
        split_seed=int(raw.get("split_seed", 0)), source=raw.get("source", ""),
        license=raw.get("license", ""), spacing_unit=raw.get("spacing_unit", "mm"), path=path,
    )
    check_manifest(manifest, path)
    return manifest


def check_manifest(m: Manifest, path: Path) -> None:
    """A ManifestError naming ``path`` if ids repeat, splits name unknown or unlabeled cases, or sets share a
    patient."""
    ids = [c.id for c in m.cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ManifestError(f"{path}: duplicate case id(s) {', '.join(dupes[:10])}")
    known = set(ids)
    for split in ("test", "validation"):
        unknown = [i for i in getattr(m, split) if i not in known]
        if unknown:
            raise ManifestError(f"{path}: {split} lists case id(s) not in 'cases': {', '.join(unknown[:10])}")
    overlap = sorted(set(m.test) & set(m.validation))
    if overlap:
        raise ManifestError(f"{path}: case(s) in both test and validation: {', '.join(overlap[:10])}")
    unlabeled_eval = [c.id for c in m.cases if c.label is None and (c.id in m.test or c.id in m.validation)]
    if unlabeled_eval:
        raise ManifestError(f"{path}: test/validation case(s) without a label: {', '.join(unlabeled_eval[:10])}")
    shared = patients_across_sets(m)
    if shared:
        listed = "; ".join(f"{patient} ({', '.join(sets)})" for patient, sets in list(shared.items())[:10])
        raise ManifestError(f"{path}: {len(shared)} patient(s) have images in more than one of test, validation and "
                            f"the training pool: {listed}. Splits are by patient: move all of a patient's images "
                            "into one set")


def patients_across_sets(m: Manifest) -> Dict[str, List[str]]:
    """{patient: the sets (test, validation, training pool) holding its images}, for patients in more than one."""
    set_of = {i: "test" for i in m.test}
    set_of.update({i: "validation" for i in m.validation if i not in set_of})
    sets: Dict[str, List[str]] = {}
    patient_of = m.patient_of
    for c in m.cases:
        where = sets.setdefault(patient_of[c.id], [])
        name = set_of.get(c.id, "training pool")
        if name not in where:
            where.append(name)
    return {patient: where for patient, where in sets.items() if len(where) > 1}


def split_held_out(case_ids: List[str], test_fraction: float, val_fraction: float, seed: int,
                   patient_of: Optional[Dict[str, str]] = None):
    """Seeded test/validation ids drawn from ``case_ids`` by patient (each case its own patient without
    ``patient_of``): the cases of the first round(test_fraction x patients) patients of a seeded permutation, then
    those of the next round(val_fraction x patients)."""
    groups = patients_of(case_ids, patient_of)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    n_test = int(round(test_fraction * len(order)))
    n_val = int(round(val_fraction * len(order)))
    if n_test + n_val >= len(order):
        raise ManifestError(f"test ({n_test}) + validation ({n_val}) leave no training patients out of {len(order)}")

    def cases(patients):
        return sorted(c for p in patients for c in groups[p])
    return cases(order[:n_test]), cases(order[n_test:n_test + n_val])


def patient_from_name(name: str, pattern: str) -> str:
    """The patient id in a file or case name: the first match of ``pattern`` (its first group if it has one)."""
    try:
        match = re.search(pattern, name)
    except re.error as err:
        raise ManifestError(f"patient pattern {pattern!r} is not a valid regular expression ({err})") from None
    if match is None:
        raise ManifestError(f"{name}: no match for the patient pattern {pattern!r}")
    return match.group(1) if match.re.groups else match.group(0)


def import_msd(dataset_dir: str | os.PathLike, name: Optional[str] = None, test_fraction: float = 0.2,
               val_fraction: float = 0.1, seed: int = 0, patient_regex: Optional[str] = None,
               patient_field: str = "patient") -> Manifest:
    """Build a manifest from an MSD-style ``dataset.json`` (only its ``training`` pairs have labels).

    Each case's patient is the entry's ``patient_field`` where the entries have one, else the match of
    ``patient_regex`` in the image's file name (e.g. ``patient\\d+``), else the case itself; test and validation
    are drawn by patient."""
    dataset_dir = Path(dataset_dir)
    meta_path = dataset_dir / "dataset.json"
    if not meta_path.is_file():
        raise ManifestError(f"{meta_path}: not found (expected an MSD-style dataset folder)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{meta_path}: not valid JSON ({err})") from err
    try:
        label_map = {int(k): v for k, v in meta["labels"].items()}
        training = meta["training"]
    except (KeyError, AttributeError, ValueError) as err:
        raise ManifestError(f"{meta_path}: needs 'labels' (index -> name) and 'training' ({err})") from err
    if sorted(label_map) != list(range(len(label_map))):
        raise ManifestError(f"{meta_path}: label indices must be 0..K, got {sorted(label_map)}")
    labels = [str(label_map[i]).lower() for i in range(len(label_map))]
    cases = _training_cases(training, dataset_dir, meta_path)
    with_field = [entry for entry in training if patient_field in entry]
    if with_field and len(with_field) != len(training):
        raise ManifestError(f"{meta_path}: {len(with_field)} of {len(training)} training entries have "
                            f"{patient_field!r}: give it for every entry or for none")
    for case, entry in zip(cases, training):  # one case per entry, in order (_training_cases refuses the others)
        if with_field:
            case.patient = str(entry[patient_field])
        elif patient_regex:
            try:
                case.patient = patient_from_name(case.id, patient_regex)
            except ManifestError as err:
                raise ManifestError(f"{meta_path}: {case.image}: {err}") from None
    patient_of = {c.id: c.patient or c.id for c in cases}
    test, val = split_held_out([c.id for c in cases], test_fraction, val_fraction, seed, patient_of)
    return Manifest(
        name=name or dataset_dir.name.split("_", 1)[-1].lower(), directory=dataset_dir.name, labels=labels,
        cases=cases, test=test, validation=val, split_seed=seed, source=str(meta.get("reference", "")),
        license=str(meta.get("licence", meta.get("license", ""))),
    )


def _training_cases(training, dataset_dir: Path, meta_path: Path) -> List[Case]:
    """The labeled cases of a dataset.json's ``training`` list; a ManifestError listing every entry without an image
    and a label, every listed file that is not there and every case id given twice."""
    if not isinstance(training, list):
        raise ManifestError(f"{meta_path}: 'training' must be a list of {{image, label}} entries")
    cases, problems = [], []
    for i, entry in enumerate(training):
        missing = [key for key in ("image", "label") if not isinstance(entry, dict) or not entry.get(key)]
        if missing:
            problems.append(f"training entry #{i} {json.dumps(entry)} has no {' and no '.join(missing)}")
            continue
        image, label = os.path.normpath(entry["image"]), os.path.normpath(entry["label"])
        problems += [f"training entry #{i}: {path} not found in {dataset_dir}"
                     for path in (image, label) if not (dataset_dir / path).is_file()]
        cases.append(Case(id=Path(image).name.split(".")[0], image=image, label=label))
    ids = [c.id for c in cases]
    problems += [f"case id {case_id} comes from more than one training entry"
                 for case_id in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise ManifestError(f"{meta_path}: {len(problems)} problem(s) in 'training':\n{shown}{more}")
    return cases
