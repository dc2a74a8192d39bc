"""Import the Left Atrium set in the layout of yulequan/UA-MT (the 2018 Atrial Segmentation Challenge as processed
by UA-MT, which SASSNet, DTC, MC-Net, SS-Net, BCP and AD-MT train on), at full or half resolution.

The folder::

    DIR/2018LA_Seg_Training Set/<case>/mri_norm2.h5   datasets "image" (x, y, z; float, z-scored over the scan)
                                                     and "label" (x, y, z; 0 background, 1 left atrium)
    DIR/train.list                                   80 training cases, one name a line (the papers label the
                                                     first 4, 8 or 16 of them)
    DIR/test.list                                    20 test cases

Every listed case is converted once into NIfTI under ``<data root>/<name>/`` with its voxel spacing (HD95 in mm).
The manifest keeps the papers' split: the test cases are ``test.list`` exactly; ``val_cases`` validation cases are
drawn (seeded) from ``train.list`` after its first ``PAPERS_LABELED_MAX`` cases, so that no labeled set of the
papers loses a case; the training pool is the rest of ``train.list`` in its order, so that
``data.labeled_selection=first_then_draw`` labels the papers' first N cases at draw 0.

``downsample`` > 1 reproduces the half-resolution copy from the full-resolution folder (LA_half's README): each axis
is cut to a multiple of the factor (its last voxels dropped), the image becomes the mean of each block, the label 1
where at least half of the block's voxels are 1.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ssl_bench.data.manifest import Case, Manifest, ManifestError, check_manifest
from ssl_bench.data.ssl4mis import read_h5_image_label, read_list, write_nifti

CASES_DIR = "2018LA_Seg_Training Set"
VOLUME_FILE = "mri_norm2.h5"
LA_LABELS = ["background", "left_atrium"]
# The largest labeled set of the papers: UA-MT's 16 (20%); MC-Net, SS-Net, BCP and AD-MT label the first 8 or 4.
PAPERS_LABELED_MAX = 16
# UA-MT's crop keeps 88 slices of the 0.625 mm scans (Xiong et al. 2021: 0.625 x 0.625 x 0.625 mm voxels).
FULL_RESOLUTION_MM = 0.625
FULL_RESOLUTION_DEPTH = 88
LA_SOURCE = ("Left Atrium, 2018 Atrial Segmentation Challenge (Xiong et al., Medical Image Analysis 2021), as "
             "processed and split by yulequan/UA-MT (Yu et al., MICCAI 2019): 80 training and 20 test LGE-MRI scans")
LA_LICENSE = ("research use under the challenge's terms; cite Xiong et al., Medical Image Analysis 67, 101832 (2021) "
              "and Yu et al., MICCAI 2019")


def volume_path(src: Path, case: str) -> Path:
    return src / CASES_DIR / case / VOLUME_FILE


def downsample_volume(image: np.ndarray, label: np.ndarray, factor: int) -> Tuple[np.ndarray, np.ndarray]:
    """(image, label) at 1/``factor`` resolution (the module docstring's operation); the image's block means are
    summed in float64 and stored as float32."""
    if factor == 1:
        return image, label
    cut = tuple(slice(0, (n // factor) * factor) for n in image.shape)
    blocks = [n // factor for n in image.shape]

    def grouped(a: np.ndarray) -> np.ndarray:
        return a[cut].reshape(blocks[0], factor, blocks[1], factor, blocks[2], factor)

    mean = grouped(image).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    ones = grouped(label.astype(np.int64)).sum(axis=(1, 3, 5))
    return mean, (2 * ones >= factor ** 3).astype(np.uint8)


def _read_case(path: Path) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]], List[str]]:
    """(image, label) of one case, or the problems that make it unusable."""
    read, problems = read_h5_image_label(path)
    if read is None:
        return None, problems
    image, label = read
    if image.ndim != 3:
        problems.append(f"{path}: image has shape {image.shape}; expected a 3D volume (x, y, z)")
    if label.shape != image.shape:
        problems.append(f"{path}: label shape {label.shape} differs from the image's {image.shape}")
    if not np.issubdtype(image.dtype, np.number):
        problems.append(f"{path}: image is not numeric ({image.dtype})")
    elif not np.isfinite(image).all():
        problems.append(f"{path}: image holds {int((~np.isfinite(image)).sum())} NaN or Inf values")
    if not np.issubdtype(label.dtype, np.number):
        problems.append(f"{path}: label is not numeric ({label.dtype})")
    else:
        bad = np.setdiff1d(np.unique(label), [0, 1])
        if bad.size:
            problems.append(f"{path}: label values {bad[:10].tolist()} outside {{0, 1}}")
    return (None if problems else (image, label)), problems


def _shape_problems(path: Path) -> Tuple[Optional[Tuple[int, ...]], List[str]]:
    read, problems = _read_case(path)
    return (read[0].shape if read else None), problems


def uamt_manifest(src: str | os.PathLike, name: str = "la", val_cases: int = 8, seed: int = 0, downsample: int = 1,
                  spacing: Optional[float] = None, num_threads: int = 2) -> Manifest:
    """The manifest of the UA-MT folder ``src`` once converted (convert_uamt), after checking both lists and every
    case: every problem is reported at once, naming its file, before anything is written.

    ``spacing``: the voxel side in mm of the files as they are; None infers it from their depth (UA-MT's crop keeps
    88 slices at 0.625 mm, its half-resolution copy 44 at 1.25 mm). The converted files' spacing is that times
    ``downsample``."""
    src = Path(src)
    if downsample < 1:
        raise ManifestError(f"--downsample must be >= 1, got {downsample}")
    lists, problems = {}, []
    for key in ("train", "test"):
        path = src / f"{key}.list"
        if path.is_file():
            lists[key] = read_list(path)
        else:
            problems.append(f"{path}: not found")
    if problems:
        raise ManifestError(f"{src}: not a UA-MT dataset folder:\n" + "\n".join(f"  - {p}" for p in problems))
    train, test = lists["train"], lists["test"]
    for key, names in lists.items():
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"{src / (key + '.list')}: lists {', '.join(repeated)} more than once")
    both = sorted(set(train) & set(test))
    if both:
        problems.append(f"{src}: {', '.join(both)} in both train.list and test.list")
    if len(train) < PAPERS_LABELED_MAX + val_cases + 1:
        problems.append(f"{src / 'train.list'}: {len(train)} cases; the validation cases come after the papers' "
                        f"first {PAPERS_LABELED_MAX}, so it needs at least {PAPERS_LABELED_MAX + val_cases + 1}")
    names = train + test
    with ThreadPoolExecutor(max_workers=num_threads) as pool:  # a first pass checks, holding no volume in memory
        checked = list(pool.map(lambda n: _shape_problems(volume_path(src, n)), names))
    problems += [p for _, case_problems in checked for p in case_problems]
    if spacing is None and not problems:
        depths = {shape[2] for shape, _ in checked}
        known = {FULL_RESOLUTION_DEPTH: FULL_RESOLUTION_MM, FULL_RESOLUTION_DEPTH // 2: 2 * FULL_RESOLUTION_MM}
        if len(depths) != 1 or next(iter(depths)) not in known:
            problems.append(f"{src}: cases of {sorted(depths)} slices; the voxel spacing is known for UA-MT's "
                            f"{FULL_RESOLUTION_DEPTH} (full resolution) or {FULL_RESOLUTION_DEPTH // 2} (half): pass "
                            "--spacing MM")
        else:
            spacing = known[next(iter(depths))]
    if problems:
        raise ManifestError(f"{src}: {len(problems)} problem(s) found, nothing written:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    validation = sorted(random.Random(seed).sample(train[PAPERS_LABELED_MAX:], val_cases), key=train.index)
    cases = [Case(id=n, image=f"imagesTr/{n}.nii.gz", label=f"labelsTr/{n}.nii.gz") for n in names]
    manifest = Manifest(name=name, directory=name, labels=list(LA_LABELS), cases=cases, test=list(test),
                        validation=validation, spacing=[spacing * downsample] * 3, split_seed=seed,
                        source=LA_SOURCE + (f"; downsampled {downsample}x by the importer" if downsample > 1 else ""),
                        license=LA_LICENSE)
    check_manifest(manifest, src)
    return manifest


def convert_uamt(src: str | os.PathLike, manifest: Manifest, data_root: str | os.PathLike, downsample: int = 1,
                 num_threads: int = 2) -> Path:
    """Writes the NIfTI files of ``manifest`` (uamt_manifest of ``src``) under ``<data_root>/<directory>/``."""
    src, target = Path(src), Path(data_root) / manifest.directory
    spacing: Sequence[float] = manifest.spacing

    def convert(case: Case) -> None:
        (image, label), _ = _read_case(volume_path(src, case.id))
        image, label = downsample_volume(image.astype(np.float32), label.astype(np.uint8), downsample)
        write_nifti(image, target / case.image, spacing)
        write_nifti(label, target / case.label, spacing)
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        list(pool.map(convert, manifest.cases))
    return target
