"""What a run logs to W&B (offline by default, into the run folder; ``wandb sync`` publishes it later).

- The run: project ``logging.wandb_project``, group ``<dataset>/<method>``, name ``<method>-frac<f>-draw<d>``, tags
  method, fraction, draw, dataset and ``logging.tags``; a stable id per run folder, so a resumed run continues it.
  The resolved config is its W&B config.
- During training: the logged losses and validation Dice (Lightning), and for the first ``logging.n_images``
  validation cases one panel each: image | ground truth | prediction on the slice with the most ground truth.
- At the end (``log_results``): the summary holds the primary test metrics (``test/*``), every other evaluated
  network's (``test_<model>/*``), the best-on-validation checkpoint's (``best/*``, with the validation score that
  chose it), the cost (``cost/*``: seconds per step, wall time, steps, parameters, peak memory) and the case counts
  (``data/*``); ``test/per_case`` is a table of per_case.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from ssl_bench.run.labeled import LabeledAmount, wandb_run_name

# Overlay colours of foreground classes 1, 2, ... (ColorBrewer Set1), named in each panel's caption.
CLASS_COLOURS: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("red", (228, 26, 28)), ("blue", (55, 126, 184)), ("green", (77, 175, 74)), ("purple", (152, 78, 163)),
    ("orange", (255, 127, 0)), ("yellow", (255, 255, 51)), ("brown", (166, 86, 40)), ("pink", (247, 129, 191)))
# Opacity of a class colour over the image.
OVERLAY_ALPHA = 0.5
# The image's grey levels span these percentiles of the slice (robust to a few extreme voxels).
WINDOW_PERCENTILES = (1.0, 99.0)
# White columns between the three panels.
PANEL_GAP = 2
# Metrics.json entries that are a run's cost, as the summary's cost/* keys.
COST_KEYS = ("seconds_per_step", "wall_time_s", "steps", "resumed_from_step", "peak_memory_mb", "n_parameters",
             "n_parameters_total")
COUNT_KEYS = ("n_labeled", "n_unlabeled", "n_validation", "n_test")


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger, silent (no banner, no history at the end: the run prints its own result), without
    the ``anonymous`` argument it always passes to ``wandb.init``, which wandb no longer uses and warns about."""

    def __init__(self, **kwargs):
        # Here: only a run that logs to W&B (logging.wandb) needs wandb (~1.5 s to import).
        import wandb
        super().__init__(settings=wandb.Settings(silent=True), **kwargs)
        self._wandb_init.pop("anonymous", None)


def wandb_logger(cfg: DictConfig, run: Path, run_id: str) -> QuietWandbLogger:
    """The W&B logger of the run in folder ``run``, with the resolved config logged."""
    d, m = cfg.data, cfg.method.name
    amount = LabeledAmount.of(d)
    logger = QuietWandbLogger(
        project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity, save_dir=str(run),
        name=wandb_run_name(m, amount, d.draw), group=f"{d.name}/{m}",
        tags=[m, *amount.tags, f"draw={d.draw}", d.name, *cfg.logging.tags], mode=cfg.logging.wandb_mode,
        id=run_id, resume="allow")
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def informative_slice(label: np.ndarray, axis: int) -> int:
    """The index along ``axis`` of the slice with the most ground-truth foreground (the middle one if none has any)."""
    other = tuple(a for a in range(label.ndim) if a != axis)
    foreground = (label > 0).sum(axis=other)
    return int(foreground.argmax()) if foreground.any() else label.shape[axis] // 2


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, WINDOW_PERCENTILES)
    scaled = (np.clip(image, lo, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.round(scaled * 255).astype(np.uint8)


def _overlay(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)
    for k in range(1, int(labels.max(initial=0)) + 1):
        colour = np.array(CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)][1], dtype=np.float64)
        where = labels == k
        rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * colour
    return np.round(rgb).astype(np.uint8)


def overlay_panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Three 2D slices side by side as one RGB uint8 image (H, 3W + 2 gaps, 3) in W&B's 0-255 range: the image
    alone (grey, windowed), then the image with the ground truth, then with the prediction, each class in its
    colour."""
    grey = _grey(image.astype(np.float64))
    gap = np.full((grey.shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([_overlay(grey, np.zeros_like(label)), gap, _overlay(grey, label), gap,
                           _overlay(grey, prediction)], axis=1)


def colour_legend(class_names: Sequence[str]) -> str:
    """``"organ1 red, organ2 blue"``: the colour of each foreground class (class_names[1:])."""
    return ", ".join(f"{name} {CLASS_COLOURS[k % len(CLASS_COLOURS)][0]}" for k, name in enumerate(class_names[1:]))


class ImageOverlays(pl.Callback):
    """Logs image | ground truth | prediction of the first validation cases (SegmentationMethod.validation_step
    returns them for ``logging.n_images`` cases) to W&B, on the slice along ``data.slice_axis`` with the most
    ground truth."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not outputs or trainer.sanity_checking or trainer.global_rank != 0:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        axis = pl_module.cfg.data.slice_axis
        label = outputs["label"][0, 0].cpu().numpy()
        k = informative_slice(label, axis)
        image = np.take(outputs["image"][0, 0].float().cpu().numpy(), k, axis=axis)
        prediction = np.take(outputs["pred"].cpu().numpy(), k, axis=axis)
        panel = overlay_panel(image, np.take(label, k, axis=axis), prediction)
        case_id = pl_module.case_ids[int(batch["case_index"][0])]
        caption = (f"{case_id}, slice {k} along axis {axis}, step {trainer.global_step}: image | ground truth | "
                   f"prediction ({colour_legend(pl_module.class_names)})")
        loggers[0].log_image(key=f"val/overlay_{batch_idx}", images=[panel], caption=[caption],
                             step=trainer.global_step)


def run_summary(metrics: dict, best_validation_dice: Optional[float]) -> Dict[str, object]:
    """The W&B summary of a finished run, from its metrics.json content (see the module docstring)."""
    primary_model = metrics["primary"]["model"]
    out: Dict[str, object] = {}
    for tag, prefix in (("last", "test"), ("best", "best")):
        for model, values in metrics["results"][tag].items():
            key = prefix if model == primary_model else f"{prefix}_{model}"
            out.update({f"{key}/{name}": value for name, value in values.items() if isinstance(value, (int, float))})
    out["best/checkpoint"] = metrics["best_checkpoint"]
    if best_validation_dice is not None:
        out["best/val_dice_mean"] = float(best_validation_dice)
    cost = [k for k in metrics if k in COST_KEYS or k.startswith("pretrain_")]
    out.update({f"cost/{k}": metrics[k] for k in cost if isinstance(metrics[k], (int, float))})
    out.update({f"data/{k}": metrics[k] for k in COUNT_KEYS})
    return out


def log_results(logger: WandbLogger, metrics: dict, rows: List[dict], best_validation_dice: Optional[float]) -> str:
    """Writes a finished run's summary and per-case table, closes the W&B run, and says where it is (one line)."""
    # Here: only a run that logs to W&B (logging.wandb) needs wandb (~1.5 s to import).
    import wandb
    experiment = logger.experiment
    experiment.summary.update(run_summary(metrics, best_validation_dice))
    columns = list(rows[0])
    experiment.log({"test/per_case": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
    if experiment.settings.mode == "offline" or experiment.offline:
        where = Path(experiment.dir).parent
        line = f"W&B run (offline): {where}; publish it with `wandb sync {where}`"
    else:
        line = f"W&B run: {experiment.url}"
    experiment.finish()
    return line


def best_score(callback) -> Optional[float]:
    """The validation score of a ModelCheckpoint's best checkpoint, or None before any validation."""
    score = getattr(callback, "best_model_score", None)
    return float(score) if isinstance(score, torch.Tensor) else None
