"""A small dataset folder in the layout of HiLab-git/SSL4MIS's ACDC (data/*.h5 volumes, data/slices/*.h5, the split
lists), with a heart-like drawing on every slice: LV a disc (3), the myocardium a ring around it (2), the RV a
crescent beside it (1). No ACDC data: the tests and the shape smoke write it."""

from pathlib import Path
from typing import Dict, List, Sequence

import h5py
import numpy as np


def heart_volume(rng: np.random.Generator, shape: Sequence[int]):
    """(image, label), each (slices, H, W): image min-max scaled to [0, 1] per volume, as SSL4MIS's h5 files hold."""
    n, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    image = rng.normal(0.1, 0.05, size=(n, h, w))
    label = np.zeros((n, h, w), dtype=np.uint8)
    cy, cx = h / 2 + rng.uniform(-h / 10, h / 10), w / 2 + rng.uniform(-w / 10, w / 10)
    for z in range(n):
        r = min(h, w) * rng.uniform(0.08, 0.14) * (1 - abs(z - n / 2) / n)
        d = np.hypot(yy - cy, xx - cx)
        rv = np.hypot(yy - cy, xx - (cx - 1.8 * r)) < 1.6 * r
        label[z][rv] = 1
        label[z][d < 1.5 * r] = 2
        label[z][d < r] = 3
        image[z] += np.choose(label[z], [0.0, 0.6, 0.25, 0.7])
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32), label


def write_ssl4mis_folder(root: Path, lists: Dict[str, List[int]], shape: Sequence[int] = (4, 40, 36),
                         seed: int = 0, slices_list: bool = False) -> Path:
    """``root`` holding data/patientXXX_frame0{1,2}.h5 for the patients of ``lists`` ({"train": [...], "val": [...],
    "test": [...]}, in list order), the training slices in data/slices/, and train.list (or, with ``slices_list``,
    train_slices.list), val.list and test.list."""
    rng = np.random.default_rng(seed)
    (root / "data" / "slices").mkdir(parents=True, exist_ok=True)
    for split, patients in lists.items():
        names = [f"patient{p:03d}_frame{f:02d}" for p in patients for f in (1, 2)]
        slice_names = []
        for name in names:
            image, label = heart_volume(rng, shape)
            with h5py.File(root / "data" / f"{name}.h5", "w") as f:
                f.create_dataset("image", data=image, compression="gzip")
                f.create_dataset("label", data=label, compression="gzip")
            if split == "train":
                for z in range(image.shape[0]):
                    slice_names.append(f"{name}_slice_{z}")
                    with h5py.File(root / "data" / "slices" / f"{name}_slice_{z}.h5", "w") as f:
                        f.create_dataset("image", data=image[z])
                        f.create_dataset("label", data=label[z])
        if split == "train" and slices_list:
            (root / "train_slices.list").write_text("".join(f"{s}\n" for s in slice_names))
        else:
            (root / f"{split}.list").write_text("".join(f"{n}\n" for n in names))
    return root
