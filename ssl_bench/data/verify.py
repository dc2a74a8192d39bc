"""Dataset integrity check, run before training so that bad data fails in seconds rather than mid-run.

In the spirit of nnU-Net's ``verify_dataset_integrity``: every case's image and label are loaded once and
checked, and EVERY problem found is reported, each naming the offending file, so users can fix their data in
one pass instead of one error per run.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Tuple

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from ssl_bench.data.manifest import DATA_ROOT_ENV, Case, Manifest
from ssl_bench.utils.errors import ExplainedError

MAX_SPACING_MM = 100.0
AFFINE_TOLERANCE = 1e-3  # in voxels: affines may differ by float rounding, not by a real shift
MAX_LISTED_VALUES = 10


@dataclass(frozen=True)
class Problem:
    case_id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file} (case {self.case_id}): {self.reason}" if self.case_id else f"{self.file}: {self.reason}"


class DataVerificationError(ExplainedError, ValueError):
    def __init__(self, problems: List[Problem], dataset: str):
        self.problems = list(problems)
        self.dataset = dataset
        super().__init__(f"{dataset}: {len(self.problems)} problem(s) found:\n{_bullets(self.problems)}")

    def __reduce__(self):  # the default would re-call __init__ with the message only, e.g. across processes
        return type(self), (self.problems, self.dataset)


@dataclass(frozen=True)
class CaseInfo:
    case_id: str
    shape: tuple
    spacing: tuple
    # Voxels of the label above background (None: the case has no label). A case without any is no error (a scan
    # may show no structure), but it has no foreground Dice, so `data verify` names it.
    foreground_voxels: Optional[int] = None


@dataclass(frozen=True)
class _Volume:
    data: np.ndarray
    affine: np.ndarray
    zooms: tuple  # as stored in the header


def verify_cases(manifest: Manifest, data_root: str | os.PathLike, case_ids: Optional[List[str]] = None,
                 num_threads: int = 2) -> Tuple[List[CaseInfo], List[Problem]]:
    """Check the named cases (all when None); returns what the clean cases learned and every problem found."""
    dataset_dir = manifest.dataset_dir(data_root)
    if not dataset_dir.is_dir():
        raise DataVerificationError([Problem("", str(dataset_dir), (
            f"dataset folder not found: the data root {str(data_root)!r} looks wrong; set {DATA_ROOT_ENV} or "
            f"data.root to the folder that contains {manifest.directory!r}"))], manifest.name)
    by_id = manifest.case_by_id
    requested = set(by_id if case_ids is None else case_ids)
    manifest_file = str(manifest.path or dataset_dir)
    problems = [Problem(i, manifest_file, f"case id not in manifest {manifest.name!r}")
                for i in dict.fromkeys(case_ids or []) if i not in by_id]
    cases = [c for c in manifest.cases if c.id in requested]  # manifest order keeps the report deterministic
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        results = list(pool.map(lambda case: _verify_case(case, dataset_dir, manifest.num_classes), cases))
    infos = [info for info, case_problems in results if not case_problems]
    problems += [p for _, case_problems in results for p in case_problems]
    return infos, problems


def verify_or_raise(manifest: Manifest, data_root: str | os.PathLike,
                    case_ids: Optional[List[str]] = None) -> List[CaseInfo]:
    infos, problems = verify_cases(manifest, data_root, case_ids)
    if problems:
        raise DataVerificationError(problems, manifest.name)
    return infos


def describe_verification(infos: List[CaseInfo], problems: List[Problem]) -> str:
    ok = f"{len(infos)} case{'' if len(infos) == 1 else 's'} OK"
    text = f"{ok}, {len(problems)} problem(s) found:\n{_bullets(problems)}" if problems else ok
    empty = [i.case_id for i in infos if i.foreground_voxels == 0]
    if empty:
        text += (f"\nwarning: {len(empty)} case(s) whose label has no foreground (no structure to segment; Dice "
                 f"is undefined there): {', '.join(empty)}")
    return text


def _bullets(problems: List[Problem]) -> str:
    return "\n".join(f"  - {p}" for p in problems)


def _verify_case(case: Case, dataset_dir: Path, num_classes: int) -> Tuple[Optional[CaseInfo], List[Problem]]:
    image_path = dataset_dir / case.image
    label_path = dataset_dir / case.label if case.label is not None else None
    problems: List[Problem] = []

    def problem(path: Path, reason: str) -> None:
        problems.append(Problem(case.id, str(path), reason))

    image = _load(image_path, problem)
    label = _load(label_path, problem) if label_path is not None else None
    info = None
    if image is not None:
        if image.data.ndim not in (2, 3, 4):
            problem(image_path, f"image has shape {image.data.shape}; expected 2D, 3D, or 4D with channels last")
        if image.data.dtype.kind not in "biuf":
            problem(image_path, f"image data type {image.data.dtype} is not numeric")
        elif image.data.dtype.kind == "f" and (bad := image.data.size - np.count_nonzero(np.isfinite(image.data))):
            problem(image_path, f"{bad} image voxel(s) are NaN or inf")
        spatial_shape = image.data.shape[:3]
        spacing = tuple(float(z) for z in image.zooms[:len(spatial_shape)])
        if not all(np.isfinite(z) and 0 < z < MAX_SPACING_MM for z in spacing):
            problem(image_path, f"voxel spacing {spacing} must be finite, > 0 and < {MAX_SPACING_MM:g} mm")
        info = CaseInfo(case.id, spatial_shape, spacing)
    if label is not None:
        if info is not None and label.data.dtype.kind in "biuf":
            info = replace(info, foreground_voxels=int(np.count_nonzero(label.data > 0)))
        if label.data.ndim not in (2, 3):
            problem(label_path, f"label has shape {label.data.shape}; expected 2D or 3D")
        elif image is not None and label.data.shape != spatial_shape:
            problem(label_path, f"label shape {label.data.shape} differs from the image's {spatial_shape}")
        elif image is not None and (difference := _affine_difference(image, label)):
            problem(label_path, f"label and image affines differ in {difference}")
        for reason in _label_value_problems(label.data, num_classes):
            problem(label_path, reason)
    return info, problems


def _load(path: Path, problem) -> Optional[_Volume]:
    if not path.is_file():
        problem(path, "file not found")
        return None
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)  # reads (and decompresses) everything, so truncation shows up here
        # nibabel silently turns zero/negative pixdims into 1/abs on load; the raw header shows what is stored
        with ImageOpener(path) as stream:
            zooms = type(img.header).from_fileobj(stream, check=False).get_zooms()
    except Exception as err:  # garbage, truncated gzip, bad header, ...: all mean "unreadable"
        problem(path, f"cannot be read as NIfTI ({type(err).__name__}: {err})")
        return None
    return _Volume(data, img.affine, tuple(zooms))


def _affine_difference(image: _Volume, label: _Volume) -> str:
    atol = AFFINE_TOLERANCE * np.linalg.norm(image.affine[:3, :3], axis=0).max()  # voxel size from the affine
    parts = []
    if not np.allclose(image.affine[:3, :3], label.affine[:3, :3], atol=atol):
        parts.append(f"axes/spacing (image {image.affine[:3, :3].tolist()} vs label {label.affine[:3, :3].tolist()})")
    if not np.allclose(image.affine[:3, 3], label.affine[:3, 3], atol=atol):
        parts.append(f"origin (image {image.affine[:3, 3].tolist()} vs label {label.affine[:3, 3].tolist()})")
    return " and ".join(parts)


def _label_value_problems(label: np.ndarray, num_classes: int) -> List[str]:
    if label.dtype.kind not in "biuf":
        return [f"label data type {label.dtype} is not numeric"]
    reasons = []
    values = label
    if label.dtype.kind == "f":  # float labels are fine as long as they hold integers
        finite = np.isfinite(label)
        if bad := label.size - np.count_nonzero(finite):
            reasons.append(f"{bad} label voxel(s) are NaN or inf")
        integral = finite & (label == np.round(label))
        if fractional := np.count_nonzero(finite & ~integral):
            example = label[finite & ~integral].flat[0]
            reasons.append(f"{fractional} label voxel(s) hold non-integer values (e.g. {example:g})")
        values = label[integral]
    outside = np.unique(values[(values < 0) | (values >= num_classes)])
    if outside.size:
        listed = ", ".join(str(int(v)) for v in outside[:MAX_LISTED_VALUES])
        more = f" and {outside.size - MAX_LISTED_VALUES} more" if outside.size > MAX_LISTED_VALUES else ""
        reasons.append(f"label values {{{listed}}}{more} outside the declared labels 0..{num_classes - 1}")
    return reasons
