"""Backbone checkpoints that one stage writes and another loads (``model.init_from``): the backbone's
state_dict with a header describing its architecture, so that loading into a different network is a clear
error naming the file rather than a silent partial load."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Dict

import torch
from omegaconf import OmegaConf

from ssl_bench.config import ConfigError
from ssl_bench.nets.backbone import Backbone
from ssl_bench.utils.dicts import differing_keys, flatten_keys

FORMAT = "ssl_bench.backbone/1"


class BackboneCheckpointError(ConfigError):
    """A backbone checkpoint that is missing or does not fit the network; the message names the file (the CLI
    prints it as a configuration error)."""


def architecture(model_cfg, spatial_dims: int, in_channels: int, out_channels: int) -> Dict[str, object]:
    """Everything that fixes the backbone's parameter shapes (the ``model`` section and the data's shape)."""
    model = OmegaConf.to_container(model_cfg) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    model.pop("init_from", None)
    model.pop("dropout", None)  # no parameters
    return {"model": model, "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}


def save_backbone(net: Backbone, path: Path, arch: Dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": FORMAT, "architecture": arch, "state_dict": net.state_dict()}, tmp)
    os.replace(tmp, path)  # atomic: its presence marks a complete checkpoint


def load_backbone(net: Backbone, path: Path, arch: Dict[str, object]) -> None:
    """Loads ``path`` into ``net`` in place; every parameter and buffer must be there with the same shape."""
    path = Path(path)
    if not path.is_file():
        raise BackboneCheckpointError(f"model.init_from: no backbone checkpoint at {path}")
    try:
        # weights_only: a backbone file may come from elsewhere, and loading it must not run its pickled code.
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BackboneCheckpointError(
            f"{path} cannot be read as a backbone checkpoint: it holds pickled objects other than tensors and "
            "plain values, which are not loaded because loading them would run their code") from error
    except Exception as error:  # truncated, or not a torch file at all
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise BackboneCheckpointError(f"{path} cannot be read as a backbone checkpoint (not a complete torch.save "
                                      f"file): {type(error).__name__} {detail}".rstrip()) from error
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise BackboneCheckpointError(f"{path} is not a backbone checkpoint (format {FORMAT})")
    if saved["architecture"] != arch:
        theirs, ours = flatten_keys(saved["architecture"]), flatten_keys(arch)
        diff = differing_keys(theirs, ours)
        raise BackboneCheckpointError(
            f"{path} holds a different backbone: " + ", ".join(f"{k} {theirs.get(k)} there, {ours.get(k)} here"
                                                                for k in diff))
    state, own = saved["state_dict"], net.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong_shape = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise BackboneCheckpointError(f"{path} does not fit the backbone: missing {missing}, "
                                      f"unexpected {unexpected}, wrong shape {wrong_shape}")
    net.load_state_dict(state)

