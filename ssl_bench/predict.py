"""``ssl-bench predict``: a trained run's network on new NIfTI images, label maps out on each input's grid and affine.

The image goes through what evaluation does to a test case (the data module's loading and z-scoring,
``inference_transforms``), then the run's sliding-window inference with its training patch
(``SegmentationMethod.predict_labels``: 2D runs predict slice by slice along ``data.slice_axis``, as they are
evaluated). By default the primary network (``method.primary_model``, e.g. Mean Teacher's teacher) of the last
checkpoint, the run's primary result.

Every input is checked, and no output would overwrite a file, before anything is written; each output is written
to a temporary file and renamed, so an interrupted prediction leaves whole files only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
from omegaconf import OmegaConf

from ssl_bench.config import config_from_container, load_yaml
from ssl_bench.data.datamodule import inference_transforms
from ssl_bench.registry import get_method
from ssl_bench.utils.errors import ExplainedError

CHECKPOINTS = "checkpoints"


class PredictError(ExplainedError, ValueError):
    """A prediction that cannot be made; the message names the file and the problem."""


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """``last`` (the run's primary result), ``best`` (the best-on-validation checkpoint) or a checkpoint file."""
    ckpt_dir = run_dir / CHECKPOINTS
    if checkpoint == "last":
        path = ckpt_dir / "last.ckpt"
    elif checkpoint == "best":
        best = sorted(ckpt_dir.glob("best-*.ckpt"))
        if len(best) != 1:
            raise PredictError(f"{ckpt_dir}: {'no' if not best else len(best)} best-*.ckpt checkpoints; "
                               "pass --checkpoint PATH")
        path = best[0]
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise PredictError(f"{path}: no such checkpoint" + ("" if path.parent.is_dir() else
                                                            f" ({path.parent} does not exist: is {run_dir} a run folder?)"))
    return path


def load_module(run_dir: Path, checkpoint: str = "last", device: str = "cpu"):
    """The run's LightningModule with the weights of ``checkpoint`` (see checkpoint_path), in eval mode on ``device``.

    Checkpoints carry their hyperparameters (config, class names), so this is Lightning's ``load_from_checkpoint``;
    for a checkpoint written before they did, the module is rebuilt from the run folder's config.yaml and
    partial_annotations.json (its class names).
    """
    path = checkpoint_path(run_dir, checkpoint)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file fails in several ways
        raise PredictError(f"{path}: cannot read as a checkpoint ({type(err).__name__}: {err})") from None
    hparams = saved.get("hyper_parameters")
    if hparams:
        method_cls = get_method(hparams["cfg"]["method"]["name"])
        module = method_cls.load_from_checkpoint(path, map_location=device)
    else:
        module = _module_from_run_folder(run_dir, saved, path)
    return module.to(device).eval()


def _module_from_run_folder(run_dir: Path, saved: dict, path: Path):
    config, flags = run_dir / "config.yaml", run_dir / "partial_annotations.json"
    for required in (config, flags):
        if not required.is_file():
            raise PredictError(f"{path} has no hyperparameters and {required} is missing: cannot rebuild its network")
    container = OmegaConf.to_container(load_yaml(config), resolve=True)
    container["model"]["init_from"] = None  # the checkpoint holds every weight
    cfg = config_from_container(container, str(config))
    class_names = ["background", *json.loads(flags.read_text())["classes"]]
    module = get_method(cfg.method.name)(cfg, class_names=class_names, case_ids=[])
    module.load_state_dict(saved["state_dict"])
    return module


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictError(f"--device {device}: no CUDA device is available")
    return device


def output_name(image: Path) -> str:
    """``case.nii.gz`` for ``case.nii.gz`` or ``case.nii``: the input's name, compressed."""
    name = image.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".nii.gz"
    raise PredictError(f"{image}: not a NIfTI file (.nii or .nii.gz)")


def check_inputs(images: Sequence[Path], out_dir: Path, overwrite: bool) -> List[Tuple[Path, Path]]:
    """(input, output) pairs, after checking every input's header and every output's name; nothing is written."""
    pairs, problems, seen = [], [], {}
    for image in images:
        try:
            target = out_dir / output_name(image)
            if target in seen:
                raise PredictError(f"{image} and {seen[target]} would both be written to {target}")
            seen[target] = image
            if not image.is_file():
                raise PredictError(f"{image}: no such file")
            try:
                header = nib.load(str(image)).header
            except Exception as err:
                raise PredictError(f"{image}: cannot read as NIfTI ({type(err).__name__}: {err})") from None
            shape = header.get_data_shape()
            if len(shape) != 3:
                raise PredictError(f"{image}: image of shape {tuple(shape)}; the network takes a 3D single-channel "
                                   "volume (as the run's training images)")
            if target.exists() and not overwrite:
                raise PredictError(f"{target} exists; pass --overwrite to replace it")
            pairs.append((image, target))
        except PredictError as err:
            problems.append(str(err))
    if problems:
        raise PredictError("\n  ".join([f"{len(problems)} of {len(images)} inputs cannot be predicted:", *problems]))
    return pairs


def save_label_map(labels: np.ndarray, reference: nib.Nifti1Image, path: Path) -> None:
    """``labels`` on ``reference``'s grid: its affine and header (spacing, orientation codes), as uint8 labels;
    written to a temporary file and renamed, so ``path`` is never a partial file."""
    header = reference.header.copy()
    dtype = np.uint8 if labels.max(initial=0) <= np.iinfo(np.uint8).max else np.int16
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(labels.astype(dtype), reference.affine, header=header)
    image.header.set_slope_inter(1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(image, str(tmp))
    os.replace(tmp, path)


def predict_image(module, image: Path, model: str) -> np.ndarray:
    """The label map of one image by the module's network ``model``, on the image's own voxel grid."""
    x = torch.as_tensor(inference_transforms()({"image": str(image)})["image"])
    if not torch.isfinite(x).all():
        raise PredictError(f"{image}: the image has NaN or infinite values")
    with torch.inference_mode():
        labels = module.predict_labels(model, x[None].to(module.device))[0]
    return labels.cpu().numpy()


def predict(run_dir: Path, images: Sequence[Path], out_dir: Path, checkpoint: str = "last",
            model: Optional[str] = None, device: str = "auto", overwrite: bool = False) -> List[Path]:
    """Segments ``images`` with the run in ``run_dir``; returns the files written into ``out_dir``."""
    pairs = check_inputs([Path(i) for i in images], Path(out_dir), overwrite)
    module = load_module(Path(run_dir), checkpoint, resolve_device(device))
    networks = module.evaluation_networks()
    model = model or module.cfg.method.primary_model
    if model not in networks:
        raise PredictError(f"--model {model}: {module.cfg.method.name} evaluates {', '.join(networks)}")
    written = []
    for image, target in pairs:
        save_label_map(predict_image(module, image, model), nib.load(str(image)), target)
        written.append(target)
        print(f"{image} -> {target}", flush=True)
    return written
