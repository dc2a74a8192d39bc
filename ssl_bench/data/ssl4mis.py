"""Import a dataset in the layout of HiLab-git/SSL4MIS (its ACDC folder, as every recent semi-supervised paper uses).

The folder, as SSL4MIS distributes it::

    DIR/data/patient001_frame01.h5      one volume per image: datasets "image" (slices, H, W; float, min-max scaled
                                        per volume) and "label" (slices, H, W; 0 background, 1 RV, 2 Myo, 3 LV)
    DIR/data/slices/*.h5                the training volumes cut into slices (what SSL4MIS trains on; not read here)
    DIR/train.list                      training volumes, one name a line (or DIR/train_slices.list: their slices)
    DIR/val.list, DIR/test.list         validation and test volumes

Every listed volume is converted once into NIfTI under ``<data root>/<name>/`` (imagesTr/, labelsTr/; slices last,
so that ``data.slice_axis=2``), and a manifest keeps SSL4MIS's split: its validation and test volumes, by patient,
and the training volumes in the order of its train list, so that ``data.labeled_selection=first`` labels the first N
patients of that list, as SSL4MIS's scripts do (``labeled_num`` 3 and 7 are their first 68 and 136 slices). The h5
files carry no voxel spacing: the NIfTI files have unit spacing and the manifest says ``spacing_unit: voxel``, so
HD95 is in voxels (as SSL4MIS's own evaluation computes it).
"""

from __future__ import annotations

import gzip
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import nibabel as nib
import numpy as np

from ssl_bench.data.manifest import Case, Manifest, ManifestError, check_manifest, patient_from_name
from ssl_bench.utils.io import atomic_write_bytes

ACDC_LABELS = ["background", "rv", "myo", "lv"]
PATIENT_PATTERN = r"patient\d+"
SLICE_SUFFIX = re.compile(r"_slice_\d+$")
ACDC_SOURCE = "ACDC (Bernard et al., IEEE TMI 2018) as processed and split by HiLab-git/SSL4MIS: 100 patients, 2 frames"
ACDC_LICENSE = "ACDC challenge terms: https://www.creatis.insa-lyon.fr/Challenge/acdc/ (cite Bernard et al. 2018)"


def read_list(path: Path) -> List[str]:
    """The volume (or slice) names of an SSL4MIS list file, in order, without a ``.h5`` suffix."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [name[:-3] if name.endswith(".h5") else name for name in names]


def split_lists(src: Path) -> Dict[str, List[str]]:
    """{"train", "validation", "test"}: the volume names of SSL4MIS's three lists, training volumes in list order."""
    problems, lists = [], {}
    train, train_slices = src / "train.list", src / "train_slices.list"
    if train.is_file():
        lists["train"] = read_list(train)
    elif train_slices.is_file():
        lists["train"] = list(dict.fromkeys(SLICE_SUFFIX.sub("", name) for name in read_list(train_slices)))
    else:
        problems.append(f"{train}: not found (nor {train_slices.name})")
    for key, file in (("validation", "val.list"), ("test", "test.list")):
        if (src / file).is_file():
            lists[key] = read_list(src / file)
        else:
            problems.append(f"{src / file}: not found")
    if problems:
        raise ManifestError(f"{src}: not an SSL4MIS dataset folder:\n" + "\n".join(f"  - {p}" for p in problems))
    seen: Dict[str, str] = {}
    for key, names in lists.items():
        for name in names:
            if name in seen:
                raise ManifestError(f"{src}: volume {name} is listed in both {seen[name]} and {key}")
            seen[name] = key
    return lists


def read_h5_image_label(path: Path, not_found: str = "not found") -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]],
                                                                           List[str]]:
    """The datasets "image" and "label" of an h5 file, or the problem that keeps them from being read."""
    if not path.is_file():
        return None, [f"{path}: {not_found}"]
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                return None, [f"{path}: no dataset {' or '.join(repr(k) for k in missing)} (has {sorted(f.keys())})"]
            return (np.asarray(f["image"]), np.asarray(f["label"])), []
    except OSError as err:
        return None, [f"{path}: cannot be read as HDF5 ({err})"]


def _read_volume(path: Path, n_classes: int) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]], List[str]]:
    """(image, label) of one h5 volume, each (slices, H, W), or the problems that make it unusable."""
    read, problems = read_h5_image_label(path, "not found (the importer reads the volumes in data/, not the "
                                               "training slices)")
    if read is None:
        return None, problems
    image, label = read
    if image.ndim != 3:
        problems.append(f"{path}: image has shape {image.shape}; expected (slices, height, width)")
    if label.shape != image.shape:
        problems.append(f"{path}: label shape {label.shape} differs from the image's {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        problems.append(f"{path}: image is not numeric or holds NaN / inf")
    if np.issubdtype(label.dtype, np.number):
        values = np.unique(label)
        bad = values[(values < 0) | (values >= n_classes) | (values != np.round(values))]
        if bad.size:
            problems.append(f"{path}: label values {bad[:10].tolist()} outside the classes 0..{n_classes - 1}")
    else:
        problems.append(f"{path}: label is not numeric")
    return (None if problems else (image, label)), problems


def write_nifti(volume: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> None:
    """A 3D array as a gzipped NIfTI volume with voxel ``spacing`` (a diagonal affine), written atomically."""
    affine = np.diag([float(s) for s in spacing] + [1.0])
    data = gzip.compress(nib.Nifti1Image(np.ascontiguousarray(volume), affine).to_bytes(), compresslevel=1)
    atomic_write_bytes(path, data)


def _save_nifti(array: np.ndarray, path: Path) -> None:
    """(slices, H, W) as a NIfTI volume (H, W, slices) with unit spacing, written atomically."""
    write_nifti(np.transpose(array, (1, 2, 0)), path)


def ssl4mis_manifest(src: str | os.PathLike, name: str = "acdc", labels: Optional[List[str]] = None,
                     patient_pattern: str = PATIENT_PATTERN, num_threads: int = 2) -> Manifest:
    """The manifest of the SSL4MIS folder ``src`` once converted (convert_ssl4mis), after checking every list and
    volume: every problem (a missing list or volume, a volume without its datasets, labels outside the classes, a
    patient in two lists) is reported at once with its file, before anything is written."""
    src, labels = Path(src), list(labels or ACDC_LABELS)
    lists = split_lists(src)
    names = [n for key in ("train", "validation", "test") for n in lists[key]]
    try:
        patients = {n: patient_from_name(n, patient_pattern) for n in names}
    except ManifestError as err:
        raise ManifestError(f"{src}: {err}") from None
    with ThreadPoolExecutor(max_workers=num_threads) as pool:  # a first pass checks, holding no volume in memory
        checked = list(pool.map(lambda n: _read_volume(src / "data" / f"{n}.h5", len(labels))[1], names))
    problems = [p for volume_problems in checked for p in volume_problems]
    if problems:
        raise ManifestError(f"{src}: {len(problems)} problem(s) found, nothing written:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    cases = [Case(id=n, image=f"imagesTr/{n}.nii.gz", label=f"labelsTr/{n}.nii.gz", patient=patients[n])
             for n in names]
    manifest = Manifest(name=name, directory=name, labels=labels, cases=cases, test=list(lists["test"]),
                        validation=list(lists["validation"]), spacing=[1.0, 1.0, 1.0], split_seed=0,
                        source=ACDC_SOURCE if labels == ACDC_LABELS else f"SSL4MIS-style folder {src}",
                        license=ACDC_LICENSE if labels == ACDC_LABELS else "", spacing_unit="voxel")
    check_manifest(manifest, src)  # e.g. a patient with a frame in the test list and one in the train list
    return manifest


def convert_ssl4mis(src: str | os.PathLike, manifest: Manifest, data_root: str | os.PathLike,
                    num_threads: int = 2) -> Path:
    """Writes the NIfTI files of ``manifest`` (ssl4mis_manifest of ``src``) under ``<data_root>/<directory>/``."""
    src, target = Path(src), Path(data_root) / manifest.directory

    def convert(case: Case) -> None:
        (image, label), _ = _read_volume(src / "data" / f"{case.id}.h5", manifest.num_classes)
        _save_nifti(image.astype(np.float32), target / case.image)
        _save_nifti(label.astype(np.uint8), target / case.label)
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        list(pool.map(convert, manifest.cases))
    return target
