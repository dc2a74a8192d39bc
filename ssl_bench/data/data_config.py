"""What an import writes besides the converted files: the manifest and the data config
``experiments/data/<name>.yaml``, so that ``--data <name>`` works right after it. Neither replaces a different
existing file unless asked to."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from ssl_bench.config import EXPERIMENTS_DIR, PROJECT_ROOT
from ssl_bench.data.manifest import Manifest
from ssl_bench.utils.io import atomic_write_text

# An SSL4MIS dataset is trained on 2D slices (data.slice_axis 2 of the converted volumes), 256 x 256 as SSL4MIS's
# networks see them (its --patch_size); README "ACDC as the papers use it" says why we crop / pad, not resize.
SSL4MIS_DATA_SETTINGS = {"spatial_dims": 2, "slice_axis": 2, "patch_size": [256, 256]}


def default_paths(name: str) -> Dict[str, Path]:
    return {"manifest": PROJECT_ROOT / "data_manifests" / f"{name}.json",
            "data_config": EXPERIMENTS_DIR / "data" / f"{name}.yaml"}


def data_config_text(manifest: Manifest, manifest_path: Path, settings: Optional[dict] = None,
                     comment: str = "") -> str:
    """The YAML of experiments/data/<name>.yaml: the dataset's name and manifest (relative to the project when it
    is inside it) and any settings the data needs (e.g. 2D slices)."""
    manifest_path = Path(manifest_path).resolve()
    try:
        shown = str(manifest_path.relative_to(PROJECT_ROOT))
    except ValueError:
        shown = str(manifest_path)
    data = {"name": manifest.name, "manifest": shown, **(settings or {})}
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    return "\n".join(lines + [OmegaConf.to_yaml(OmegaConf.create({"data": data})).rstrip()]) + "\n"


def conflicts(outputs: Dict[Path, str], overwrite: bool) -> List[str]:
    """The files of ``outputs`` ({path: content}) that exist with other content and may not be replaced."""
    return [] if overwrite else [f"{path} exists with other content; pass --overwrite to replace it"
                                 for path, text in outputs.items() if path.exists() and path.read_text() != text]


def write_outputs(outputs: Dict[Path, str]) -> None:
    for path, text in outputs.items():
        atomic_write_text(path, text)


def ssl4mis_comment(manifest: Manifest) -> str:
    """The header of an SSL4MIS import's data config."""
    return (f"{manifest.source}.\nImported by `ssl-bench data import-ssl4mis` into <data root>/{manifest.directory}/: "
            "SSL4MIS's split by patient;\nno voxel spacing (HD95 in voxels). The papers' training setting: "
            "protocol=ssl4mis.")
