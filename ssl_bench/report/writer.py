"""``ssl-bench report``: reads the runs, keeps their records, writes the tables and figures, logs to W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from ssl_bench.config import EXPERIMENTS_DIR
from ssl_bench.report.plots import plot_cost_vs_dice, plot_dice_vs_alpha, plot_dice_vs_fraction, plot_variants
from ssl_bench.report.runs import RECORDS_DIR, read_runs, write_records
from ssl_bench.report.summary import Summary, summarize
from ssl_bench.report.tables import csv_text, markdown, summary_row
from ssl_bench.report.wandb_report import log_to_wandb
from ssl_bench.utils.io import atomic_write_text

SWEEPS_DIR = EXPERIMENTS_DIR / "sweeps"
# The files of a report in ``out``, by key of write_report's answer.
FILES = {"csv": "summary.csv", "markdown": "summary.md", "plot": "dice_vs_fraction.png",
         "variants_plot": "dice_vs_fraction_variants.png", "cost_plot": "cost_vs_dice.png",
         "alpha_plot": "dice_vs_alpha.png"}


# The report of a runs folder, by default: a folder of its own inside it (runs/report: a user's toy run never rewrites
# the committed results/), except for a records folder, whose report is the folder that keeps it
# (`ssl-bench report results/records` writes results/, the committed report).
REPORT_DIR = "report"


def default_out(runs_dir: Path) -> Path:
    """Where ``ssl-bench report RUNS_DIR`` writes without --out: RUNS_DIR/report, or for a records folder
    (``results/records``) the folder that holds it (``results``)."""
    runs_dir = Path(runs_dir)
    return runs_dir.parent if runs_dir.name == RECORDS_DIR else runs_dir / REPORT_DIR


def build_summary(runs_dir: Path, out: Path, records: bool = True, sweeps_dir: Optional[Path] = SWEEPS_DIR) -> Summary:
    """Reads the runs (and, with ``records``, the records in ``out/records``, which it updates) and summarises them.
    A report folder inside ``runs_dir`` (its records) is not read as run folders."""
    runs_dir, out = Path(runs_dir), Path(out)
    inside = out.resolve() != runs_dir.resolve() and out.resolve().is_relative_to(runs_dir.resolve())
    loaded = read_runs(runs_dir, out / RECORDS_DIR if records else None, exclude=out if inside else None)
    write_records(loaded)
    return summarize(loaded, sweeps_dir)


def write_report(runs_dir: Path, out: Path, wandb_project: Optional[str] = None, records: bool = True,
                 sweeps_dir: Optional[Path] = SWEEPS_DIR, wandb_entity: Optional[str] = None) -> Dict[str, Path]:
    """Writes summary.csv, summary.md and the figures (ssl_bench.report.plots) into ``out``; logs them to W&B if a
    project is given. With ``records``, also reads and updates the records of ``out/records``
    (ssl_bench.report.runs). Missing cells are listed for the sweeps of ``sweeps_dir`` the runs belong to."""
    summary = build_summary(runs_dir, out, records, sweeps_dir)
    return write_report_files(summary, out, wandb_project, wandb_entity)


def write_report_files(summary: Summary, out: Path, wandb_project: Optional[str] = None,
                       wandb_entity: Optional[str] = None) -> Dict[str, Path]:
    """The files of a report in ``out`` (FILES; a figure with nothing to show is not written), by key."""
    out = Path(out)
    paths = {key: out / name for key, name in FILES.items()}
    atomic_write_text(paths["csv"], csv_text([summary_row(r) for r in summary.runs]))
    atomic_write_text(paths["markdown"], markdown(summary))
    fraction_groups = summary.fraction_groups()
    methods = [g for g in fraction_groups if not g.is_variant]
    written = {"csv": paths["csv"], "markdown": paths["markdown"]}
    if methods:
        written["plot"] = plot_dice_vs_fraction(methods, paths["plot"], summary.noise_floors)
    for key, figure in (("variants_plot", lambda: plot_variants(fraction_groups, paths["variants_plot"])),
                        ("cost_plot", lambda: plot_cost_vs_dice(summary, paths["cost_plot"])),
                        ("alpha_plot", lambda: plot_dice_vs_alpha(summary.alpha_groups, paths["alpha_plot"])
                         if summary.alpha_groups else None)):
        path = figure()
        if path is not None:
            written[key] = path
    if wandb_project:
        figures = {p.stem: p for key, p in written.items() if key.endswith("plot")}
        log_to_wandb(summary, figures, out, wandb_project, wandb_entity)
    return written
