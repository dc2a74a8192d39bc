"""Fake run folders for the report's tests: per_case.csv, metrics.json and config.yaml as train() writes them,
with hand-written per-case Dice."""

import csv
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import OmegaConf

CLASSES = ["a", "b"]
# Per-case Dice (class a, class b) of the primary result, by (method, fraction, draw): hand-written numbers.
DICE = {
    ("supervised", 0.5, 0): {"c1": (0.70, 0.50), "c2": (0.80, 0.60), "c3": (0.60, 0.40)},
    ("supervised", 0.5, 1): {"c1": (0.72, 0.52), "c2": (0.78, 0.56), "c3": (0.66, 0.42)},
    ("mean_teacher", 0.5, 0): {"c1": (0.75, 0.55), "c2": (0.81, 0.65), "c3": (0.61, 0.49)},
    # c3 has no class b in ground truth or prediction (NaN): its case Dice is class a's alone.
    ("mean_teacher", 0.5, 1): {"c1": (0.74, 0.58), "c2": (0.70, 0.50), "c3": (0.69, math.nan)},
    ("supervised", 1.0, 0): {"c1": (0.90, 0.80), "c2": (0.88, 0.82), "c3": (0.86, 0.78)},
}
BEST_OFFSET = -0.01  # the best-on-validation checkpoint scores a little lower in these fakes
TEST_BEST_OFFSET = 0.02  # and the checkpoint best on the test cases higher
PRIMARY = {"supervised": "student", "mean_teacher": "teacher", "smile": "student", "contrastive": "student",
           "co_training": "ensemble"}
H200 = {"git_commit": "8eee470", "git_dirty": False, "device": "NVIDIA H200", "torch": "2.11.0+cu130"}


def hd95(dice: float) -> float:
    return 10.0 * (1.0 - dice)


def _case_row(checkpoint, model, case_id, per_class, surfaces=False):
    """A per_case.csv row; ``surfaces``: with Jaccard (D / (2 - D)) and ASD (HD95 / 4), as LA's records have them."""
    hd = [hd95(d) for d in per_class]
    row = {"checkpoint": checkpoint, "model": model, "case_id": case_id,
           **{f"dice_{c}": d for c, d in zip(CLASSES, per_class)}, "dice_mean": float(np.nanmean(per_class))}
    if surfaces:
        jaccard = [d / (2 - d) for d in per_class]
        row.update({**{f"jaccard_{c}": j for c, j in zip(CLASSES, jaccard)}, "jaccard_mean": float(np.nanmean(jaccard))})
    row.update({**{f"hd95_{c}": h for c, h in zip(CLASSES, hd)}, "hd95_mean": float(np.nanmean(hd))})
    if surfaces:
        row.update({**{f"asd_{c}": h / 4 for c, h in zip(CLASSES, hd)}, "asd_mean": float(np.nanmean(hd)) / 4})
    return row


def _summary(rows):
    return {"n_cases": len(rows), **{k: float(np.nanmean([r[k] for r in rows]))
                                     for k in rows[0] if k.startswith(("dice_", "jaccard_", "hd95_", "asd_"))}}


def write_fake_run(runs: Path, method: str, fraction: float, draw: int, cases: dict, folder_name: Optional[str] = None,
                   alpha=None, dataset: str = "toy", provenance: Optional[dict] = None, test_best: bool = False,
                   draw_folder: Optional[str] = None, seconds_per_step: Optional[float] = None,
                   surfaces: bool = False) -> dict:
    """A run folder as train() leaves it: per_case.csv and metrics.json, in the layout of run_dir()
    (method folder ``folder_name``, e.g. smile-alpha0.5, when the run has a tag)."""
    folder = runs / dataset / (folder_name or method) / f"frac{fraction}" / (draw_folder or f"draw{draw}")
    folder.mkdir(parents=True)
    rows = []
    checkpoints = [("last", 0.0), ("best", BEST_OFFSET)] + ([("test_best", TEST_BEST_OFFSET)] if test_best else [])
    for checkpoint, offset in checkpoints:
        for model in dict.fromkeys((PRIMARY[method], "student")):
            # The student of a teacher method is off by 0.1: the report must read only the primary model.
            shift = offset + (0.0 if model == PRIMARY[method] else -0.1)
            rows += [_case_row(checkpoint, model, case_id, [d + shift for d in dice], surfaces)
                     for case_id, dice in cases.items()]
    with open(folder / "per_case.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    results = {ckpt: {model: _summary([r for r in rows if r["checkpoint"] == ckpt and r["model"] == model])
                      for model in dict.fromkeys(r["model"] for r in rows)} for ckpt, _ in checkpoints}
    metrics = {"dataset": dataset, "method": method, "fraction": fraction, "draw": draw, "classes": CLASSES,
               "n_labeled": 2, "n_unlabeled": 2, "n_validation": 1, "n_test": len(cases),
               "primary": {"checkpoint": "last", "model": PRIMARY[method]}, "results": results,
               "best_checkpoint": "best-10.ckpt", "steps": 20, "resumed_from_step": 0,
               "seconds_per_step": seconds_per_step if seconds_per_step is not None else 0.25 + draw,
               "wall_time_s": 100.0 + draw, "peak_memory_mb": 512.5,
               "n_parameters": 1000, "run_dir": str(folder)}
    if alpha is not None:
        metrics["partial_alpha"] = alpha
    if provenance is not None:
        metrics["provenance"] = provenance
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def write_config(folder: Path, method: str, partial_alpha=None, tags=(), seed=None, **changes) -> None:
    """A config.yaml with the keys the report reads; ``changes`` as section__name=value."""
    config = {"method": {"name": method, "lambda_max": 0.1}, "data": {"name": "toy", "fraction": 0.5, "draw": 0},
              "optim": {"lr": 0.002}, "trainer": {"seed": seed, "precision": "32-true"}, "run": {"tag": None},
              "logging": {"wandb": True, "tags": list(tags)}}
    if partial_alpha is not None:  # a key that runs made before it existed do not have
        config["data"]["partial"] = {"alpha": partial_alpha}
    for key, value in changes.items():
        section, name = key.split("__")
        config.setdefault(section, {})[name] = value
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(config))


def case_dice(key, case_id) -> float:
    return float(np.nanmean(DICE[key][case_id]))


def write_runs_with_a_variant(runs: Path, step_cost: Optional[dict] = None) -> Path:
    """DICE's runs with configs, plus mean_teacher-lambda_max1.0 (a variant of a method-only setting) at 0.5;
    ``step_cost``: seconds per step by method folder."""
    step_cost = step_cost or {}
    for (method, fraction, draw), cases in DICE.items():
        write_fake_run(runs, method, fraction, draw, cases, seconds_per_step=step_cost.get(method))
        write_config(runs / "toy" / method / f"frac{fraction}" / f"draw{draw}", method, data__draw=draw)
    folder = "mean_teacher-lambda_max1.0"
    for draw in (0, 1):
        write_fake_run(runs, "mean_teacher", 0.5, draw, DICE["supervised", 0.5, draw], folder_name=folder,
                       seconds_per_step=step_cost.get(folder))
        write_config(runs / "toy" / folder / "frac0.5" / f"draw{draw}", "mean_teacher", method__lambda_max=1.0,
                     run__tag="lambda_max1.0", data__draw=draw)
    return runs
