"""What an import writes besides the converted files: the manifest and the data config
``experiments/data/<name>.yaml``, so that ``--data <name>`` works right after it. Neither replaces a different
existing file unless asked to."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

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
                     comment: str = "", top: Optional[dict] = None) -> str:
    """The YAML of experiments/data/<name>.yaml: the dataset's name and manifest (relative to the project when it
    is inside it), any settings the data needs (e.g. 2D slices) and top-level keys (e.g. its default protocol)."""
    manifest_path = Path(manifest_path).resolve()
    try:
        shown = str(manifest_path.relative_to(PROJECT_ROOT))
    except ValueError:
        shown = str(manifest_path)
    data = {"name": manifest.name, "manifest": shown, **(settings or {})}
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    return "\n".join(lines + [OmegaConf.to_yaml(OmegaConf.create({**(top or {}), "data": data})).rstrip()]) + "\n"


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


# The papers' labeled sets are the first N cases of UA-MT's train list: draw 0 takes them, later draws are seeded.
UAMT_DATA_SETTINGS = {"labeled_selection": "first_then_draw"}
# The protocol preset of each resolution (experiments/protocol/): the papers' setting at full resolution, the same
# recipe at half resolution on a CPU budget.
UAMT_PROTOCOL_BY_SPACING = {0.625: "uamt", 1.25: "la_cpu"}


def uamt_data_settings(manifest: Manifest) -> Tuple[dict, dict]:
    """(data settings, top-level keys) of a UA-MT import's data config: the labeled selection, and the protocol of
    its resolution where one fits it."""
    protocol = UAMT_PROTOCOL_BY_SPACING.get(round(manifest.spacing[0], 4))
    return dict(UAMT_DATA_SETTINGS), ({"protocol": protocol} if protocol else {})


def uamt_comment(manifest: Manifest) -> str:
    """The header of a UA-MT import's data config."""
    return (f"{manifest.source}.\nImported by `ssl-bench data import-uamt` into <data root>/{manifest.directory}/ at "
            f"{manifest.spacing[0]:g} mm: test = test.list; {len(manifest.validation)} validation cases drawn from "
            f"train.list after its first 16;\nthe pool in train.list order, so that draw 0 labels the papers' first N "
            "cases (data.n_labeled=4, 8, 16).")
