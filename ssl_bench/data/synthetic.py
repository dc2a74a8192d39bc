"""Deterministic tiny organ-like segmentation datasets (NIfTI + manifest) for tests, CI and the
partial-annotation experiments.

Each case holds ``n_organs`` non-overlapping, roughened, randomly oriented ellipsoids of very different
sizes (organ 1 largest; small organs are where partial annotation hurts most). Intensities are per organ
but overlap a little (texture, bias field, noise): learnable, yet no threshold segments them perfectly.
Everything is drawn from ``numpy.random.default_rng`` seeded by (spec.seed, case index).

By default the organs fill much of the image and may touch (neighbouring organs). ``organ_ratios`` and
``organ_gap`` make the other layout of Petit et al. 2018's premise: a few small organs apart from each other in a
large volume, mostly background, each organ's share of the image set (e.g. 5% down to 0.1%) and at least
``organ_gap`` background voxels between any two of them and the image border.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Tuple

import nibabel as nib
import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from ssl_bench.data.manifest import Case, Manifest, ManifestError, load_manifest, split_held_out

MANIFEST_NAME = "manifest.json"
MAX_ORGANS = 8
MIN_SIDE = 16
# Part of ensure_synthetic's cache key: bump it whenever the generated content changes.
GENERATOR_VERSION = 1

_MIN_ORGAN_VOXELS = 4
_PLACEMENT_TRIES = 50
# Separate organs (organ_gap >= 1): layouts drawn before giving up.
_LAYOUT_TRIES = 20
# Organs may press slightly into ones placed before (losing those voxels), as neighbouring organs do.
_MAX_OVERLAP = 0.1
_MAX_FILL = 0.4  # of the image, by all organs together: beyond it they no longer fit side by side
_BACKGROUND_MEAN = 0.2
_BACKGROUND_TEXTURE = 0.03
_NOISE_STD = 0.04
_BIAS_AMPLITUDE = 0.2


@dataclass(frozen=True)
class SyntheticSpec:
    n_cases: int = 24
    shape: Tuple[int, ...] = (32, 32, 32)  # 3 entries -> 3D volumes; 2 entries -> 2D images (H, W)
    n_organs: int = 3  # foreground classes, 1..MAX_ORGANS
    spacing: Tuple[float, ...] = (1.0, 1.0, 1.0)  # mm, same length as shape
    test_fraction: float = 0.25
    val_fraction: float = 0.125
    seed: int = 0
    name: str = "synthetic"
    # (largest, smallest): the nominal share of the image's voxels of organ 1 and of organ n_organs, the organs in
    # between geometric; empty: radii from 30% of the smallest side down to 7% (_organ_radii).
    organ_ratios: Tuple[float, ...] = ()
    # 0: organs may touch and press slightly into ones placed before; g >= 1: at least g background voxels between
    # any two organs and between an organ and the image border (separate organs, none cut by the border).
    organ_gap: int = 0

    def __post_init__(self):
        # Tuples of plain numbers, so that equal specs hash (and cache) identically.
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "organ_ratios", tuple(float(r) for r in self.organ_ratios))
        if not 1 <= self.n_organs <= MAX_ORGANS:
            raise ValueError(f"n_organs must be between 1 and {MAX_ORGANS}, got {self.n_organs}")
        if len(self.shape) not in (2, 3):
            raise ValueError(f"shape must have 2 (H, W) or 3 entries, got {self.shape}")
        if min(self.shape) < MIN_SIDE:
            raise ValueError(f"every side of shape must be at least {MIN_SIDE} voxels, got {self.shape}")
        if len(self.spacing) != len(self.shape):
            raise ValueError(f"spacing needs one entry per shape axis ({len(self.shape)}), got {self.spacing}")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"name must be a plain folder name (letters, digits, _ . -), got {self.name!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.organ_ratios:
            if len(self.organ_ratios) != 2 or not 0 < self.organ_ratios[1] <= self.organ_ratios[0]:
                raise ValueError(f"organ_ratios must be (largest, smallest) with 0 < smallest <= largest, got "
                                 f"{self.organ_ratios}")
            if np.geomspace(*self.organ_ratios, self.n_organs).sum() > _MAX_FILL:
                raise ValueError(f"organ_ratios {self.organ_ratios}: {self.n_organs} organs would fill more than "
                                 f"{_MAX_FILL:.0%} of the image")
        if self.organ_gap < 0:
            raise ValueError(f"organ_gap must be non-negative, got {self.organ_gap}")
        if not (0 <= self.test_fraction < 1 and 0 <= self.val_fraction < 1):
            raise ValueError(f"test_fraction and val_fraction must be in [0, 1), got {self.test_fraction}, "
                             f"{self.val_fraction}")
        try:
            split_held_out(_case_ids(self), self.test_fraction, self.val_fraction, self.seed)
        except ManifestError as err:
            raise ValueError(f"n_cases={self.n_cases} is too few for the held-out split: {err}") from err


def _case_ids(spec: SyntheticSpec):
    return [f"{spec.name}_{i:03d}" for i in range(spec.n_cases)]


def generate_synthetic(out_dir, *, spec: SyntheticSpec = SyntheticSpec()) -> Manifest:
    """Write the dataset under ``out_dir/<spec.name>/`` and its manifest to ``out_dir/manifest.json``."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    # The manifest marks a complete dataset: an old one must not vouch for half-rewritten files.
    manifest_path.unlink(missing_ok=True)
    dataset_dir = out_dir / spec.name
    for folder in ("imagesTr", "labelsTr"):
        (dataset_dir / folder).mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    affine[range(len(spec.spacing)), range(len(spec.spacing))] = spec.spacing
    ids, cases = _case_ids(spec), []
    for index, case_id in enumerate(ids):
        image, label = _generate_case(spec, index)
        case = Case(id=case_id, image=f"imagesTr/{case_id}.nii.gz", label=f"labelsTr/{case_id}.nii.gz")
        _save_nifti(image, affine, dataset_dir / case.image)
        _save_nifti(label, affine, dataset_dir / case.label)
        cases.append(case)
    test, validation = split_held_out(ids, spec.test_fraction, spec.val_fraction, spec.seed)
    labels = ["background"] + [f"organ{k}" for k in range(1, spec.n_organs + 1)]
    Manifest(
        name=spec.name, directory=spec.name, labels=labels, cases=cases, test=test, validation=validation,
        spacing=list(spec.spacing), split_seed=spec.seed,
        source=f"ssl_bench.data.synthetic v{GENERATOR_VERSION}: {spec}", license="generated, no restrictions",
    ).save(manifest_path)
    return load_manifest(manifest_path)


def ensure_synthetic(cache_root, *, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Manifest path of the dataset for ``spec`` under ``cache_root``, generating it only if missing.

    Generation happens in a temporary sibling folder renamed into place, so concurrent callers never see
    a partial dataset; whoever loses the rename race uses the winner's folder.
    """
    cache_root = Path(cache_root)
    final_dir = cache_root / f"{spec.name}-{spec_hash(spec)}"
    manifest_path = final_dir / MANIFEST_NAME
    if manifest_path.is_file():
        return manifest_path
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=cache_root))
    try:
        generate_synthetic(tmp_dir, spec=spec)
        for _ in range(2):
            try:
                os.rename(tmp_dir, final_dir)  # fails only if final_dir exists and is not empty
                break
            except OSError:
                if manifest_path.is_file():
                    break  # lost the race: the winner's folder is complete
                # A leftover without manifest (written by hand or by older code): move aside, then delete,
                # so no reader sees a half-deleted folder under the final name.
                stale = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.stale-", dir=cache_root))
                with contextlib.suppress(FileNotFoundError):  # someone else moved it first
                    os.rename(final_dir, stale)
                shutil.rmtree(stale, ignore_errors=True)
        else:
            raise RuntimeError(f"could not move the generated dataset into {final_dir}")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return manifest_path


def spec_hash(spec: SyntheticSpec) -> str:
    """Short stable hash of every spec field and the generator version."""
    key = json.dumps({"version": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _organ_appearance(spec: SyntheticSpec):
    """Per-organ (mean, texture amplitude, texture scale), the same in every case: a tissue type per organ."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed))  # no spawn key: apart from every case's
    # Means 0.3..0.95 against a 0.2 background: neighbouring ranges overlap once texture, bias and noise act.
    means = rng.permutation(np.linspace(0.3, 0.95, spec.n_organs))
    return means, rng.uniform(0.02, 0.08, spec.n_organs), rng.uniform(0.7, 2.0, spec.n_organs)


def _organ_radii(spec: SyntheticSpec) -> np.ndarray:
    """Nominal radius per organ in voxels: that of a ball holding its share of the image (spec.organ_ratios), or by
    default geometric from 30% of the smallest side down to 7% (>= 2 voxels), shrunk together where the organs would
    otherwise fill more than _MAX_FILL of the image."""
    side, ndim = min(spec.shape), len(spec.shape)
    if spec.organ_ratios:
        voxels = np.geomspace(*spec.organ_ratios, spec.n_organs) * np.prod(spec.shape)
        return np.sqrt(voxels / np.pi) if ndim == 2 else np.cbrt(voxels * 3 / (4 * np.pi))
    radii = np.geomspace(0.30 * side, max(0.07 * side, 2.0), spec.n_organs)
    ball_volume = np.pi * radii ** 2 if ndim == 2 else 4 / 3 * np.pi * radii ** 3
    fill = ball_volume.sum() / np.prod(spec.shape)
    return np.maximum(radii * min(1.0, _MAX_FILL / fill) ** (1 / ndim), 2.0)


def _generate_case(spec: SyntheticSpec, index: int):
    """(float32 image, uint8 label) of case ``index``, drawn from its own seeded stream."""
    means, texture_amplitudes, texture_scales = _organ_appearance(spec)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(index,)))
    label = _place_organs(rng, spec.shape, _organ_radii(spec), spec.organ_gap)
    image = _BACKGROUND_MEAN + _BACKGROUND_TEXTURE * _smooth_noise(rng, spec.shape, 2.0)
    for organ in range(1, spec.n_organs + 1):
        inside = label == organ
        texture = _smooth_noise(rng, spec.shape, texture_scales[organ - 1])[inside]
        image[inside] = means[organ - 1] + texture_amplitudes[organ - 1] * texture
    image = image * _bias_field(rng, spec.shape) + _NOISE_STD * rng.standard_normal(spec.shape)
    return image.astype(np.float32), label


class _NoRoom(Exception):
    """A separate organ found no place in the layout drawn so far."""


def _place_organs(rng: np.random.Generator, shape, radii, gap: int = 0) -> np.ndarray:
    """uint8 label map: one roughened, randomly oriented ellipsoid per organ, largest first. ``gap`` >= 1 (separate
    organs, SyntheticSpec.organ_gap): a layout where some organ finds no room is drawn again, up to _LAYOUT_TRIES
    times."""
    if not gap:
        return _layout(rng, shape, radii, gap)
    for _ in range(_LAYOUT_TRIES):
        try:
            return _layout(rng, shape, radii, gap)
        except _NoRoom:
            continue
    raise RuntimeError(f"no layout of {len(radii)} organs with organ_gap {gap} in shape {shape} in {_LAYOUT_TRIES} "
                       "tries: use fewer or smaller organs, a smaller gap or a larger shape")


def _layout(rng: np.random.Generator, shape, radii, gap: int) -> np.ndarray:
    """One draw of _place_organs. ``gap`` >= 1: every organ whole, more than ``gap`` voxels from earlier organs and
    from the border, or _NoRoom."""
    ndim = len(shape)
    label = np.zeros(shape, np.uint8)
    patient_scale = rng.uniform(0.9, 1.1)  # shared by all organs, so their size order holds in every case
    for organ, nominal_radius in enumerate(radii, start=1):
        radius = nominal_radius * patient_scale * rng.uniform(0.93, 1.07)
        stretch = np.exp(rng.uniform(-0.3, 0.3, ndim))
        semi_axes = radius * stretch / np.prod(stretch) ** (1 / ndim)  # keeps the volume of a radius-r ball
        # QR of a gaussian matrix is a uniformly random rotation once the signs are fixed.
        q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
        rotation = q * np.sign(np.diag(r))
        # Smooth noise added to the approximate signed distance makes the surface lumpy, organ-like.
        roughness = 0.2 * radius * _smooth_noise(rng, shape, max(1.0, 0.35 * radius))
        # Half-size of a box that surely holds the organ: each candidate is computed in that box only.
        reach = semi_axes.max() * (1 + max(0.0, -roughness.min()) / radius)
        # Room around each voxel: distance to the nearest earlier organ or to the image border. Centres
        # with room for the organ are tried first (in random order), the most roomy of the others next.
        clearance = distance_transform_edt(np.pad(label == 0, 1))[(slice(1, -1),) * ndim]
        if gap:  # centres where the smooth ellipsoid and its gap fit, in random order
            fitting = np.argwhere(clearance > semi_axes.max() + gap)
            if not len(fitting):
                raise _NoRoom
            centers = fitting[rng.integers(len(fitting), size=_PLACEMENT_TRIES)] + rng.uniform(
                0, 1, (_PLACEMENT_TRIES, ndim))
            order = np.arange(_PLACEMENT_TRIES)
        else:
            centers = rng.uniform(0, shape, size=(_PLACEMENT_TRIES, ndim))
            room = clearance[tuple(centers.astype(int).T)]
            order = np.argsort(-np.minimum(room, radius), kind="stable")
        chosen = None
        for center in centers[order]:
            box = tuple(slice(max(0, int(c - reach)), min(n, int(c + reach) + 2))
                        for c, n in zip(center, shape))
            points = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
            distance = (np.linalg.norm((points - center) @ rotation / semi_axes, axis=-1) - 1) * radius
            inside = distance + roughness[box] < 0
            if gap:  # all of it, or another candidate: no voxel within gap of an earlier organ or the border
                free = inside if (clearance[box][inside] > gap).all() else np.zeros_like(inside)
            else:
                free = inside & (label[box] == 0)  # earlier organs keep their voxels
            if free.sum() >= max(_MIN_ORGAN_VOXELS, (1 - _MAX_OVERLAP) * inside.sum()):
                chosen = (box, free)
                break
            if chosen is None or free.sum() > chosen[1].sum():  # crowded: the candidate losing the least
                chosen = (box, free)
        box, mask = chosen
        if gap and not mask.any():
            raise _NoRoom
        if mask.sum() < _MIN_ORGAN_VOXELS:
            raise RuntimeError(f"no room for organ {organ} in shape {shape}: use fewer organs or a larger shape")
        label[box][mask] = organ
    return label


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Unit-variance white noise blurred at ``sigma`` voxels: a smooth random field."""
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / field.std()


def _bias_field(rng: np.random.Generator, shape) -> np.ndarray:
    """Multiplicative intensity inhomogeneity: a random quadratic over the image, peaking at +-20%."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    polynomial = sum(rng.normal() * x + rng.normal() * x ** 2 for x in axes)
    polynomial = polynomial - polynomial.mean()
    return 1.0 + _BIAS_AMPLITUDE * polynomial / np.abs(polynomial).max()
