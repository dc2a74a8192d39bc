"""The report in W&B: one run per dataset, with a stable id and name (``report-<dataset>``), in the project of the
training runs, so that each ``ssl-bench report`` updates the same run instead of adding another.

Each holds the dataset's tables (Dice by method and fraction with SD and interval over draws, the paired tests
against supervised, cost per method, the noise floor, every run, missing cells), an interactive Dice-vs-fraction
chart and the report's figures (with error bars). Rows name the W&B group of their training runs
(``<dataset>/<method>``, as train() groups them) and, when the entity is known, link to it.

Offline by default (WANDB_MODE decides): the run is written under ``<out>/wandb/`` and published with
``wandb sync <out>/wandb/offline-run-*``. A new report replaces the previous offline copy of its run there, so a
sync never replays an older report after the newer one.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import quote

from ssl_bench.report.groups import Group
from ssl_bench.report.noise_floor import floor_of
from ssl_bench.report.runs import Run
from ssl_bench.report.summary import Summary
from ssl_bench.report.tables import group_record, summary_row
from ssl_bench.run.labeled import LabeledAmount, wandb_run_name

WANDB_URL = "https://wandb.ai"


def report_run_id(dataset: str) -> str:
    """The W&B id (and name) of a dataset's report run: the same on every machine and every report."""
    return "report-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", dataset).strip("-") or "dataset")[:56]


def training_group(dataset: str, method: str) -> str:
    """The W&B group of a method's training runs (train.py: ``<dataset>/<method name>``, the tag not included)."""
    return f"{dataset}/{method.split('-')[0]}"


def training_run_name(run: Run) -> str:
    """The W&B name of a training run, as train.py sets it."""
    m = run.metrics
    return wandb_run_name(m["method"], LabeledAmount.of_metrics(m), m["draw"])


def group_url(entity: Optional[str], project: str, group: str) -> str:
    return f"{WANDB_URL}/{entity}/{project}/groups/{quote(group, safe='')}" if entity else ""


def _table(records: List[dict]):
    # Here: only a report logged to W&B needs wandb (~1.5 s to import).
    import wandb
    columns = list(dict.fromkeys(k for r in records for k in r))
    return wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in records])


def _cell(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def dataset_tables(summary: Summary, dataset: str, project: str, entity: Optional[str]) -> Dict[str, List[dict]]:
    """The records of each table of a dataset's report run."""
    groups = [g for g in summary.fraction_groups() if g.dataset == dataset]

    def link(g: Group) -> dict:
        group = training_group(dataset, g.method)
        return {"wandb_group": group, "wandb_group_url": group_url(entity, project, group)}

    dice = [{**group_record(g), "variant": g.is_variant, **link(g)} for g in groups]
    tests = []
    for g in groups:
        if g.vs_reference is None:
            continue
        floor = floor_of(summary.noise_floors, g.dataset, g.fraction)
        t = g.vs_reference
        tests.append({"method": g.method, "fraction": g.fraction, "reference": g.reference_method,
                      "run_pairs": len(g.pairs), "case_pairs": t.n_pairs, "mean_difference": t.mean_difference,
                      "median_difference": t.median_difference, "p_value": t.p_value, "cases_better": t.n_better,
                      "smallest_detectable_effect": floor.detectable_effect if floor else None,
                      "cross_hardware_pairs": len(g.cross_hardware_pairs),
                      "protocol_differences": "; ".join(g.protocol_differences), **link(g)})
    cost = []
    for c in summary.costs:
        if c.dataset != dataset:
            continue
        for hardware, (n, ours, theirs) in c.seconds_per_step.items():
            cost.append({"method": c.method, "hardware": hardware, "runs": n, "seconds_per_step": ours,
                         "supervised_seconds_per_step": theirs, "relative_to_supervised": ours / theirs,
                         "n_parameters": c.n_parameters, "n_parameters_total": c.n_parameters_total,
                         "wandb_group": training_group(dataset, c.method)})
    noise = [{"fraction": f.fraction, "replicate_sets": len(f.replicate_sets), "run_std": f.run_std,
              "run_std_source": f.run_std_source, "case_std": f.case_std, "cases": f.n_cases, "run_pairs": f.n_run_pairs,
              "smallest_detectable_effect": f.detectable_effect, "case_level_effect": f.case_level_effect,
              "run_pairs_for_half_a_point": f.run_pairs_for_target}
             for f in summary.noise_floors if f.dataset == dataset]
    runs = [{**summary_row(r), "wandb_group": training_group(dataset, r.metrics["method"]),
             "wandb_run_name": training_run_name(r)}
            for r in summary.runs if r.dataset == dataset]
    missing = [{"sweep": s.name, "cell": c.description, "state": c.state, "folder": str(c.relative_dir)}
               for s in summary.coverage for c in s.missing if c.relative_dir.parts[0] == dataset]
    tables = {"dice_by_fraction": dice, "paired_tests": tests, "cost": cost, "noise_floor": noise, "runs": runs}
    if missing:
        tables["missing_cells"] = missing
    return {name: records for name, records in tables.items() if records}


def _dice_chart(groups: List[Group]):
    # Here: only a report logged to W&B needs wandb (~1.5 s to import).
    import wandb
    methods = list(dict.fromkeys(g.method for g in groups if not g.is_variant))
    lines = {m: sorted((g for g in groups if g.method == m), key=lambda g: g.fraction) for m in methods}
    return wandb.plot.line_series(xs=[[g.fraction for g in lines[m]] for m in methods],
                                  ys=[[g.dice.mean for g in lines[m]] for m in methods], keys=methods,
                                  title="Test Dice against labeled fraction (mean over draws)", xname="labeled fraction")


def _drop_previous_offline_copies(wandb_dir: Path, run_id: str) -> None:
    for folder in wandb_dir.glob(f"offline-run-*-{run_id}"):
        shutil.rmtree(folder, ignore_errors=True)


def log_to_wandb(summary: Summary, figures: Dict[str, Path], out: Path, project: str,
                 entity: Optional[str] = None) -> List[str]:
    """One report run per dataset (report_run_id); returns their ids."""
    # Here: only a report logged to W&B needs wandb (~1.5 s to import).
    import wandb
    mode = os.environ.get("WANDB_MODE", "offline")
    ids = []
    for dataset in summary.datasets():
        run_id = report_run_id(dataset)
        if mode == "offline":
            _drop_previous_offline_copies(Path(out) / "wandb", run_id)
        run = wandb.init(project=project, entity=entity, id=run_id, name=run_id, group=f"{dataset}/report",
                         job_type="report", tags=["report", dataset], dir=str(out), mode=mode, resume="allow",
                         reinit="finish_previous")
        groups = [g for g in summary.fraction_groups() if g.dataset == dataset]
        payload = {name: _table(records) for name, records in dataset_tables(summary, dataset, project, entity).items()}
        if groups:
            payload["dice_vs_fraction_chart"] = _dice_chart(groups)
        payload.update({name: wandb.Image(str(path)) for name, path in figures.items()})
        run.log(payload)
        run.summary.update({f"dice/{g.method}/frac{g.fraction:g}": g.dice.mean for g in groups})
        run.finish()
        ids.append(run_id)
    return ids
