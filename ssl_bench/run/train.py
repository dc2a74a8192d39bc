"""One run: a method at a labeled fraction and draw, trained, then evaluated on the test cases.

Run folder ``runs/<dataset>/<method>/frac<f>/draw<d>/`` holds ``config.yaml``, ``splits.json``,
``partial_annotations.json`` (which organs of which labeled case are annotated, data.partial),
``checkpoints/`` (``last.ckpt``, ``best-*.ckpt``, ``test_best-*.ckpt``: ssl_bench/run/test_selection_audit.py),
``csv/`` logs, ``wandb/`` (offline runs), ``per_case.csv`` and ``metrics.json``. ``metrics.json`` is written last
and atomically: it is the mark of a finished run. Re-running the same command resumes from ``last.ckpt``; a finished
run is reported and skipped unless ``force``. While a run lives it holds the folder's ``.lock``: a second run of the
same folder started meanwhile is refused, naming the first (ssl_bench/run/run_lock.py).

Before a run starts, its method's ``prepare_run`` does any work the run depends on and shares with other runs
(contrastive: the pretraining of the dataset and draw, reused if finished; ssl_bench/run/pretrain.py) and may
complete the config (``model.init_from``); its cost goes into metrics.json beside the run's own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ssl_bench.config import ConfigError, run_seed, to_yaml
from ssl_bench.data.compact import copy_note
from ssl_bench.data.datamodule import SegmentationDataModule
from ssl_bench.data.dataset import resolve_dataset
from ssl_bench.data.manifest import Manifest
from ssl_bench.data.partial import partial_annotation_flags
from ssl_bench.data.splits import PoolSplit, split_pool
from ssl_bench.data.stream import OneEpochStreams, streams_resume_by_position
from ssl_bench.data.verify import verify_or_raise
from ssl_bench.nets.backbone import count_parameters
from ssl_bench.registry import get_method
from ssl_bench.run.callbacks import (CHECKPOINTS, LAST, BestCheckpoint, CheckpointOnStop, ResumeCheckpoint,
                                     RunStopped, StepTimer, TrainingRandomState, fit_stoppably)
from ssl_bench.run.console import (RunCSVLogger, StepProgressBar, TimeEstimate, checkpoint_step, quiet_lightning,
                                   run_header, validation_interval)
from ssl_bench.run.evaluation import summarize
from ssl_bench.run.identity import METRICS_FILE, UnreadableResult, finished_result
from ssl_bench.run.labeled import LabeledAmount
from ssl_bench.run.paths import labeled_setting, run_dir
from ssl_bench.run.provenance_entry import collect_provenance
from ssl_bench.run.resume import resume_point
from ssl_bench.run.run_lock import clear_run_folder, run_folder_lock
from ssl_bench.run.stop_scores import SCORES_FILE, keep_scores, read_scores
from ssl_bench.run.test_selection_audit import TAG as AUDIT_TAG
from ssl_bench.run.test_selection_audit import TestSelectionAudit
from ssl_bench.run.wandb_logging import ImageOverlays, best_score, log_results, wandb_logger
from ssl_bench.utils.io import atomic_write_json, atomic_write_text

@dataclass
class RunData:
    """What a run reads: the dataset, the split of its fraction and draw, which labeled case keeps which organ's
    annotation (data.partial), and the voxel spacing of every verified case."""
    manifest: Manifest
    root: Path
    split: PoolSplit
    annotated: Dict[str, List[bool]]
    spacings: Dict[str, Sequence[float]]

    def datamodule(self, cfg: DictConfig, method_cls) -> SegmentationDataModule:
        return SegmentationDataModule(cfg, self.manifest, self.root, self.split, self.spacings,
                                      uses_unlabeled=method_cls.uses_unlabeled, annotated=self.annotated,
                                      voxel_index=method_cls.uses_voxel_index)


def prepare_data(cfg: DictConfig, method_cls, training: bool = True, evaluation: bool = True) -> RunData:
    """Resolve and split the dataset and verify every file a run will read: the training cases the method uses
    and/or the validation and test cases. Bad data fails here, in seconds, naming every file."""
    manifest, root = resolve_dataset(cfg)
    d = cfg.data
    try:
        split = split_pool(manifest.pool, d.fraction, d.draw, n_labeled=d.n_labeled, patient_of=manifest.patient_of,
                           selection=d.labeled_selection)
    except ValueError as err:  # e.g. more labeled patients asked for than the pool has
        raise ConfigError(f"{d.name}: {err}") from None
    cases = (split.labeled + (split.unlabeled if method_cls.uses_unlabeled else [])) if training else []
    cases += (manifest.validation + manifest.test) if evaluation else []
    spacings = {i.case_id: i.spacing for i in verify_or_raise(manifest, root, cases)}
    annotated = partial_annotation_flags(split.labeled, manifest.num_classes - 1, cfg.data.partial.alpha, cfg.data.draw)
    return RunData(manifest, root, split, annotated, spacings)


def checkpoint_callbacks(ckpt_dir: Path) -> Tuple[BestCheckpoint, ResumeCheckpoint]:
    """The best-on-validation checkpoint (``best-<step>.ckpt``, reported beside the last) and ``last.ckpt``, the
    state after the latest validation, to resume from; in this order (see ResumeCheckpoint)."""
    best = BestCheckpoint(dirpath=str(ckpt_dir), filename="best-{step}", monitor="val/dice_mean", mode="max",
                           save_top_k=1, auto_insert_metric_name=False)
    return best, ResumeCheckpoint(ckpt_dir / LAST)


def step_callbacks(timer: StepTimer) -> list:
    """The callbacks of a run that act at every training step, checkpoints and progress output aside (``make perf``
    times the stack's step with them)."""
    return [timer, TrainingRandomState(), OneEpochStreams(), LearningRateMonitor(logging_interval="step")]


def _loggers(cfg: DictConfig, run: Path, resume_step: int) -> list:
    loggers = [RunCSVLogger(run, resume_step)]
    if cfg.logging.wandb and cfg.logging.wandb_mode != "disabled":
        os.environ.setdefault("WANDB_DIR", str(run))
        # A stable id per run folder, so a resumed run continues the same W&B run.
        loggers.append(wandb_logger(cfg, run, _stable_id(run)))
    return loggers


def _stable_id(run: Path) -> str:
    return hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:16]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_per_case(path: Path, rows: List[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _results(rows: List[dict], foreground: List[str]) -> Dict[str, Dict[str, dict]]:
    out: Dict[str, Dict[str, dict]] = {}
    for tag in dict.fromkeys(r["checkpoint"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows):
            sel = [r for r in rows if r["checkpoint"] == tag and r["model"] == model]
            if sel:
                out.setdefault(tag, {})[model] = summarize(sel, foreground)
    return out


def format_summary(metrics: dict) -> str:
    """The table printed at the end of a run (and for a finished run that is skipped)."""
    fg = metrics["classes"]
    amount = LabeledAmount.of_metrics(metrics).words
    several = metrics.get("n_labeled_patients", metrics["n_labeled"]) != metrics["n_labeled"]  # images per patient
    labeled = f"{metrics['n_labeled']} labeled" + (f" ({metrics['n_labeled_patients']} patients)" if several else "")
    unlabeled = f"{metrics['n_unlabeled']} unlabeled" + (f" ({metrics['n_unlabeled_patients']} patients)"
                                                       if several else "")
    protocol = f" / protocol {metrics['protocol']}" if metrics.get("protocol") else ""
    head = (f"{metrics['dataset']}{protocol} / {metrics['method']} / {amount} / draw {metrics['draw']}: {labeled}, "
            f"{unlabeled} cases; test on {metrics['n_test']} cases")
    cols = (["checkpoint", "model"] + [f"Dice {c}" for c in fg] + ["Dice mean"]
            + [f"HD95 mean ({metrics.get('hd95_unit', 'mm')})"])
    lines = [head, "  ".join(f"{c:>14}" for c in cols)]
    primary = metrics["primary"]
    for tag, models in metrics["results"].items():
        for model, s in models.items():
            star = "*" if (tag, model) == (primary["checkpoint"], primary["model"]) else " "
            vals = [s[f"dice_{c}"] for c in fg] + [s["dice_mean"], s["hd95_mean"]]
            lines.append("  ".join([f"{tag + star:>14}", f"{model:>14}"] + [f"{v:14.4f}" for v in vals]))
    if "test_selection" in metrics:
        audit = metrics["test_selection"]
        lines.append(f"{AUDIT_TAG}: the checkpoint best on the test cases (step {audit['best_step']}), an audit of "
                     f"test-set selection, never a result; scoring the test cases cost "
                     f"{audit['seconds_per_validation']:.1f} s per validation ({audit['cost_vs_validation']:.1f}x the "
                     f"validation's own time)")
    lines.append(f"* primary result (last checkpoint{', ' + primary['model'] if len(metrics['results']['last']) > 1 else ''}). "
                 f"{metrics['steps']} steps, {metrics['seconds_per_step']:.3f} s/step, "
                 f"wall {metrics['wall_time_s']:.0f} s. Run folder: {metrics['run_dir']}")
    if "pretrain_steps" in metrics:  # a prerequisite stage (contrastive pretraining), shared by the draw's runs
        lines.append(f"  pretraining: {metrics['pretrain_steps']} steps, {metrics['pretrain_seconds_per_step']:.3f} "
                     f"s/step, wall {metrics['pretrain_wall_time_s']:.0f} s. Run folder: {metrics['pretrain_run_dir']}")
    return "\n".join(lines)


def _save_predictions(module, dm: SegmentationDataModule, out_dir: Path) -> None:
    """Test predictions of the primary model as NIfTI on the image's own grid and affine."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = dm.manifest.case_by_id
    module.eval()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            case_id = module.case_ids[int(batch["case_index"][0])]
            pred = module.predict_labels(module.cfg.method.primary_model, batch["image"].to(module.device))[0]
            affine = nib.load(str(dm.dataset_dir / by_id[case_id].image)).affine
            img = nib.Nifti1Image(pred.cpu().numpy().astype(np.uint8), affine)
            tmp = out_dir / f".{case_id}.nii.gz.tmp.nii.gz"
            nib.save(img, str(tmp))
            os.replace(tmp, out_dir / f"{case_id}.nii.gz")


def _score_selected_on_stop(cfg: DictConfig, run: Path, module, dm: SegmentationDataModule,
                            paths: Sequence[Optional[str]]) -> None:
    """Scores the stopped run's selected checkpoints (best on validation, best on test) on the test cases and keeps
    their rows (stop_scores.py), on a trainer of their own: the run's trainer holds the stop that ended its fit."""
    ckpt_dir = run / CHECKPOINTS
    kept = read_scores(ckpt_dir)
    todo = [Path(p) for p in dict.fromkeys(p for p in paths if p) if Path(p).is_file() and Path(p).name not in kept]
    if not todo:
        return
    t = cfg.trainer
    tester = pl.Trainer(accelerator=t.accelerator, devices=1, precision=t.precision, deterministic=t.deterministic,
                        benchmark=t.cudnn_benchmark, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(run), callbacks=[])
    for path in todo:
        tester.test(module, datamodule=dm, ckpt_path=str(path), verbose=False)
        keep_scores(ckpt_dir, path.name, checkpoint_step(path), module.test_rows)
    print(f"scored {', '.join(p.name for p in todo)} on the test cases before stopping ({ckpt_dir / SCORES_FILE})",
          file=sys.stderr, flush=True)


def _with_data_root(cfg: DictConfig) -> DictConfig:
    """``cfg`` with data.root set to the data root it resolves to (from $SSL_BENCH_DATA_ROOT when data.root is empty,
    the one that holds the dataset where several are given),
    so that config.yaml says which files the run read. data.root is an execution key (EXECUTION_KEYS): the same run
    on another machine's copy of the data is still the same run."""
    if not cfg.data.manifest or (cfg.data.root and os.pathsep not in cfg.data.root):
        return cfg
    _, root = resolve_dataset(cfg)
    return OmegaConf.merge(cfg, {"data": {"root": str(root.resolve())}})


def train(cfg: DictConfig, force: bool = False, resume_from: Optional[str] = None) -> dict:
    """Train and evaluate one run; returns the content of its metrics.json. ``resume_from``: "newest", or one of
    the run's checkpoints, to resume from instead of last.ckpt when that cannot be read (ssl_bench/run/resume.py).

    It prints one header line, a progress bar over the step budget, one line with the measured time per step, then
    the result table; Lightning's own messages are kept out (progress.quiet_lightning)."""
    with quiet_lightning():
        return _train(cfg, force, resume_from)


def _train(cfg: DictConfig, force: bool, resume_from: Optional[str]) -> dict:
    started = time.perf_counter()
    run = run_dir(cfg)
    # One process in a run folder at a time (ssl_bench/run/run_lock.py), held until the run ends. Under DDP the ranks
    # Lightning launches re-run this command: they work in rank 0's folder under rank 0's lock.
    if rank_zero_only.rank != 0:
        return _train_in(run, cfg, False, resume_from, started)
    with run_folder_lock(run):
        return _train_in(run, cfg, force, resume_from, started)


def _train_in(run: Path, cfg: DictConfig, force: bool, resume_from: Optional[str], started: float) -> dict:
    metrics_path = run / METRICS_FILE
    if force:
        clear_run_folder(run)
    method_cls = get_method(cfg.method.name)
    try:  # refuses a folder holding a run of another config, finished or not
        metrics = finished_result(run, method_cls.run_config(cfg))
    except UnreadableResult as err:
        print(f"{err}: not counted as finished; the run is evaluated again from {run / CHECKPOINTS / LAST} (or "
              "trained again if that is missing), which rewrites it", file=sys.stderr)
    else:
        if metrics is not None:
            print(f"{run}: already finished (use --force to run it again)")
            print(format_summary(metrics))
            return metrics
    last = run / CHECKPOINTS / LAST
    resume = resume_point(last, resume_from)  # an unreadable last.ckpt stops the run here, saying how to go on
    resume_step = checkpoint_step(resume) if resume is not None else 0
    cfg = _with_data_root(cfg)
    cfg, prerequisite_metrics = method_cls.prepare_run(cfg)  # e.g. contrastive pretraining, once per draw
    cfg_yaml = to_yaml(cfg)

    data = prepare_data(cfg, method_cls)  # bad data fails here, before the run folder is touched
    manifest, split, annotated = data.manifest, data.split, data.annotated
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", cfg_yaml)
    atomic_write_json(run / "splits.json", {
        "fraction": cfg.data.fraction, "n_labeled": cfg.data.n_labeled, "labeled_selection": cfg.data.labeled_selection,
        "draw": cfg.data.draw, "labeled_patients": split.labeled_patients, "labeled": split.labeled,
        "unlabeled": split.unlabeled, "validation": manifest.validation, "test": manifest.test})
    atomic_write_json(run / "partial_annotations.json", {
        "alpha": cfg.data.partial.alpha, "draw": cfg.data.draw, "classes": manifest.foreground_labels,
        "annotated": {case_id: dict(zip(manifest.foreground_labels, flags)) for case_id, flags in annotated.items()}})

    # Subnormal floats appear in the optimizer state and normalisation as a run converges; on CPU each one
    # costs a microcode assist, slowing training steps several-fold. Flushing them changes nothing visible.
    torch.set_flush_denormal(True)
    pl.seed_everything(run_seed(cfg), workers=True)
    dm = data.datamodule(cfg, method_cls)
    module = method_cls(cfg, class_names=manifest.labels, case_ids=[c.id for c in manifest.cases])
    if cfg.method.primary_model not in module.evaluation_networks():
        raise ConfigError(f"method.primary_model: '{cfg.method.primary_model}' is not evaluated by "
                          f"{cfg.method.name} (it evaluates {', '.join(module.evaluation_networks())})")
    ckpt_dir = run / CHECKPOINTS
    best_cb, resume_cb = checkpoint_callbacks(ckpt_dir)
    timer = StepTimer(started=started)
    loggers = _loggers(cfg, run, resume_step)
    stop = CheckpointOnStop(ckpt_dir / LAST)
    callbacks = [best_cb, resume_cb, stop, *step_callbacks(timer), TimeEstimate(timer)]
    audit = TestSelectionAudit(ckpt_dir) if cfg.eval.test_selection_audit else None
    if audit is not None:
        callbacks.append(audit)
    if cfg.logging.log_images and any(isinstance(lg, WandbLogger) for lg in loggers):
        callbacks.append(ImageOverlays())
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepProgressBar())
    t = cfg.trainer
    trainer = pl.Trainer(
        max_steps=t.max_steps, max_epochs=-1, val_check_interval=validation_interval(t),
        check_val_every_n_epoch=None, num_sanity_val_steps=0, accelerator=t.accelerator, devices=t.devices,
        strategy=t.strategy, num_nodes=t.num_nodes, precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, benchmark=t.cudnn_benchmark, enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False, default_root_dir=str(run), logger=loggers, callbacks=callbacks)
    if trainer.is_global_zero:
        print(run_header(cfg, len(split.labeled), len(split.unlabeled) if method_cls.uses_unlabeled else 0,
                         len(manifest.test), run, resume_step), flush=True)
    try:
        with streams_resume_by_position():
            fit_stoppably(trainer, stop, module, datamodule=dm, ckpt_path=None if resume is None else str(resume))
    except RunStopped:
        if cfg.run.score_on_stop and trainer.world_size == 1:
            _score_selected_on_stop(cfg, run, module, dm, [best_cb.best_model_path, audit.best_path if audit else None])
            if audit is not None:  # a superseded test_best file would travel with the state for nothing
                audit.delete_unreferenced(trainer)
        raise
    trainer.save_checkpoint(str(last), weights_only=False)
    method_records = module.run_records()
    if trainer.is_global_zero:
        for name, content in method_records.items():
            atomic_write_json(run / name, content)
    resumed_step = trainer.global_step - timer.steps_this_process

    best = best_cb.best_model_path or str(last)
    evaluated = [("last", str(last)), ("best", best)]
    if audit is not None and audit.best_path:
        evaluated.append((AUDIT_TAG, audit.best_path))
    rows: List[dict] = []
    scored: Dict[int, List[dict]] = {}  # the rows of each training step scored: two selections of one step share them
    kept = read_scores(ckpt_dir)  # a stopped run's selected checkpoints, scored before it stopped (stop_scores.py)
    for tag, path in evaluated:
        name = Path(path).name
        step = kept[name]["step"] if name in kept else checkpoint_step(Path(path))
        if step not in scored and tag != "last" and name in kept:
            scored[step] = kept[name]["rows"]
        if step not in scored:
            module.checkpoint_tag = tag
            trainer.test(module, datamodule=dm, ckpt_path=path, verbose=False)
            scored[step] = module.test_rows
            if tag == "last" and cfg.eval.save_predictions and trainer.is_global_zero:
                _save_predictions(module, dm, run / "predictions")
        rows += [{**row, "checkpoint": tag} for row in scored[step]]

    foreground = manifest.foreground_labels
    metrics = {
        "dataset": cfg.data.name, "method": cfg.method.name, "fraction": cfg.data.fraction, "draw": cfg.data.draw,
        # data.n_labeled (None: data.fraction) and data.labeled_selection; patients and cases differ where a patient
        # has several images (n_labeled / n_unlabeled count cases).
        "protocol": cfg.protocol, "labeled_setting": labeled_setting(cfg),
        "n_labeled_patients_asked": cfg.data.n_labeled,
        "labeled_selection": cfg.data.labeled_selection, "n_labeled_patients": len(split.labeled_patients),
        "n_unlabeled_patients": len(split.unlabeled_patients), "hd95_unit": manifest.spacing_unit,
        "partial_alpha": cfg.data.partial.alpha, "classes": foreground, "n_labeled": len(split.labeled), "n_unlabeled": len(split.unlabeled),
        "n_validation": len(manifest.validation), "n_test": len(manifest.test),
        "primary": {"checkpoint": "last", "model": cfg.method.primary_model},
        "results": _results(rows, foreground),
        "best_checkpoint": Path(best).name, "steps": trainer.global_step, "resumed_from_step": resumed_step,
        "seconds_per_step": timer.seconds_per_step, "wall_time_s": timer.wall_time_s,
        # Trained parameters (an EMA teacher or other frozen copies are counted only in the total).
        "peak_memory_mb": _peak_memory_mb(module.device),
        "n_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "n_parameters_total": count_parameters(module),
        "run_dir": str(run),
        **prerequisite_metrics,
        "provenance": collect_provenance(cfg.trainer.precision, module.device, trainer.world_size),
    }
    note = copy_note(data.root / manifest.directory) if cfg.data.manifest else None
    if note is not None:  # a compact copy of the dataset (a GPU window's): its images may be rounded to float16
        metrics["provenance"]["data_copy"] = note["note"]
    if audit is not None:
        metrics["test_selection"] = audit.summary()
    if method_records:  # e.g. SMILEr's relabeling rounds: a record keeps metrics.json, not the run folder's other files
        metrics["run_records"] = method_records
    metrics["primary"].update(metrics["results"]["last"][cfg.method.primary_model])
    if trainer.is_global_zero:
        _write_per_case(run / "per_case.csv", rows)
        wandb_lines = [log_results(lg, metrics, rows, best_score(best_cb)) for lg in loggers
                       if isinstance(lg, WandbLogger)]
        atomic_write_json(metrics_path, metrics)  # last: its presence marks the run finished
        print("\n".join(wandb_lines + [format_summary(metrics)]))
        sys.stdout.flush()
    return metrics
