"""A dataset's cases in a compact file, for a machine that receives few bytes (a lent GPU: ssl_bench/evidence).

Labels as uint8; an image exactly where its values are integers that uint8 / int16 / uint16 hold (hippocampus), else
as float16 where its values are within float16's range (Left Atrium's normalised floats: a relative rounding of at most
2^-11, about 0.05%, the only way a run on the unpacked copy differs from one on the original), else as float32; each
file's NIfTI header and affine kept; xz-compressed.
Unpacked into NIfTI files at the manifest's paths with COMPACT_NOTE beside them, which a run on the copy records in
its provenance (``data_copy``).
"""

from __future__ import annotations

import io
import json
import lzma
from pathlib import Path
from typing import Dict, Optional

import nibabel as nib
import numpy as np

from ssl_bench.data.manifest import Manifest
from ssl_bench.utils.io import atomic_write_bytes, atomic_write_json

COMPACT_SUFFIX = ".npz.xz"
COMPACT_NOTE = "compact_copy.json"
# The integer types an image is stored in exactly when its values fit (smallest first).
EXACT_TYPES = (np.uint8, np.int16, np.uint16)
XZ_PRESET = 6
FLOAT16_MAX = float(np.finfo(np.float16).max)


def compact_image(values: np.ndarray) -> np.ndarray:
    """The image in the smallest type that holds it exactly, else float16 where its values are within float16's
    range, else as it is (float32)."""
    if np.issubdtype(values.dtype, np.integer) or np.array_equal(values, np.round(values)):
        for kind in EXACT_TYPES:
            info = np.iinfo(kind)
            if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
                return values.astype(kind)
    if values.size and np.isfinite(values).all() and np.abs(values).max() <= FLOAT16_MAX:
        return values.astype(np.float16)
    return values.astype(np.float32)


def pack_dataset(manifest: Manifest, root: Path, out_file: Path) -> dict:
    """Writes ``out_file`` (every case of the dataset in ``root``); returns what it holds."""
    arrays: Dict[str, np.ndarray] = {}
    types = set()
    for case in manifest.cases:
        for kind, relative in (("image", case.image), ("label", case.label)):
            if not relative:
                continue
            img = nib.load(str(root / manifest.directory / relative))
            values = np.asarray(img.dataobj)
            stored = compact_image(values) if kind == "image" else values.astype(np.uint8)
            if kind == "label" and not np.array_equal(stored, values):
                raise ValueError(f"{root / manifest.directory / relative}: label values outside 0-255")
            types.add(f"{kind} {stored.dtype}")
            arrays[f"{relative}"] = stored
            arrays[f"{relative}.header"] = np.frombuffer(img.header.binaryblock, dtype=np.uint8)
            arrays[f"{relative}.affine"] = img.affine
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out_file, lzma.compress(buf.getvalue(), preset=XZ_PRESET))
    return {"dataset": manifest.name, "cases": len(manifest.cases), "stored_as": sorted(types),
            "bytes": out_file.stat().st_size}


def unpack_dataset(compact: Path, manifest: Manifest, root: Path) -> Path:
    """Writes the dataset of ``compact`` as NIfTI float32 images and uint8 labels under ``root``/<directory>, with
    COMPACT_NOTE; returns that folder. An existing complete copy is left as it is."""
    folder = root / manifest.directory
    if (folder / COMPACT_NOTE).is_file():
        return folder
    with np.load(io.BytesIO(lzma.decompress(Path(compact).read_bytes()))) as arrays:
        rounded = []
        for case in manifest.cases:
            for kind, relative in (("image", case.image), ("label", case.label)):
                if not relative:
                    continue
                values = arrays[relative]
                if kind == "image" and values.dtype == np.float16:
                    rounded.append(case.id)
                header = nib.Nifti1Header.from_fileobj(io.BytesIO(arrays[f"{relative}.header"].tobytes()))
                data = values.astype(np.float32) if kind == "image" else values.astype(np.uint8)
                header.set_data_dtype(data.dtype)
                img = nib.Nifti1Image(data, arrays[f"{relative}.affine"], header=header)
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                nib.save(img, str(folder / relative))
    note = {"source": str(compact), "images_rounded_to_float16": len(rounded), "cases": len(manifest.cases),
            "note": "images rounded to float16 (relative error <= 2^-11) unless their values are integers or beyond "
                    "float16's range; those images and all labels exact"}
    atomic_write_json(folder / COMPACT_NOTE, note)
    return folder


def copy_note(dataset_dir: Path) -> Optional[dict]:
    """What COMPACT_NOTE in ``dataset_dir`` says (None: the dataset is no compact copy)."""
    path = Path(dataset_dir) / COMPACT_NOTE
    return json.loads(path.read_text()) if path.is_file() else None
