"""A run's labeled amount is worded by one class (ssl_bench/run/labeled.py) wherever it is named: the run folder, the
W&B run's name and tags (and the report's link to it), the run's header and result table, a sweep's cells. The run
folder's name stays byte for byte what existing run folders and records use."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ssl_bench.config import PROJECT_ROOT, load_config
from ssl_bench.report.wandb_report import training_run_name
from ssl_bench.run.console import run_header
from ssl_bench.run.labeled import LabeledAmount, wandb_run_name
from ssl_bench.run.paths import labeled_setting, run_dir
from ssl_bench.run.train import format_summary
from ssl_bench.sweep.spec import Cell

RECORDS = PROJECT_ROOT / "results" / "records"
# (overrides, run folder, W&B name part, W&B tags, header and result table, sweep selection keys)
SETTINGS = [
    (["data.fraction=0.05"], "frac0.05", "frac0.05", ["frac=0.05"], "fraction 0.05", "fraction=0.05"),
    (["data.fraction=1.0"], "frac1.0", "frac1", ["frac=1"], "fraction 1", "fraction=1"),
    (["data.fraction=0.1", "data.labeled_selection=first"], "frac0.1-first", "frac0.1-first",
     ["frac=0.1", "labeled_selection=first"], "fraction 0.1 (the first listed)", "fraction=0.1 labeled_selection=first"),
    (["data.n_labeled=3"], "labeled3", "labeled3", ["n_labeled=3"], "3 labeled patients", "n_labeled=3"),
    (["data.n_labeled=16", "data.labeled_selection=first_then_draw"], "labeled16-first_then_draw",
     "labeled16-first_then_draw", ["n_labeled=16", "labeled_selection=first_then_draw"],
     "16 labeled patients (the first listed at draw 0, drawn at later draws)",
     "n_labeled=16 labeled_selection=first_then_draw"),
]


def _metrics(cfg) -> dict:
    """A committed record's metrics.json, as a run of ``cfg``'s labeled amount would have written it."""
    metrics = json.loads(next(RECORDS.rglob("metrics.json")).read_text())
    d = cfg.data
    return {**metrics, "fraction": d.fraction, "n_labeled_patients_asked": d.n_labeled,
            "labeled_selection": d.labeled_selection, "labeled_setting": labeled_setting(cfg)}


@pytest.mark.parametrize("overrides, folder, short, tags, words, assignments", SETTINGS)
def test_every_place_words_the_labeled_amount_alike(overrides, folder, short, tags, words, assignments):
    cfg = load_config("mean_teacher", "synthetic", overrides)
    amount = LabeledAmount.of(cfg.data)
    assert run_dir(cfg).parent.name == labeled_setting(cfg) == amount.folder == folder
    assert (amount.short, amount.tags, amount.words, amount.assignments) == (short, tags, words, assignments)
    metrics = _metrics(cfg)
    assert LabeledAmount.of_metrics(metrics) == amount
    # the run's header and its result table
    assert f"mean_teacher on synthetic, {words}, draw 0: " in run_header(cfg, 4, 3, 3, Path("runs/x"), 0)
    assert f" / {words} / draw " in format_summary(metrics).splitlines()[0]
    # its W&B name, and the report's link to it
    name = f"mean_teacher-{short}-draw0"
    assert wandb_run_name("mean_teacher", amount, 0) == name
    assert training_run_name(SimpleNamespace(metrics={**metrics, "method": "mean_teacher", "draw": 0})) == name
    # a sweep's cell
    cell = Cell("mean_teacher", "synthetic", cfg.data.fraction, 0, (), (), Path(), n_labeled=cfg.data.n_labeled,
                labeled_selection=cfg.data.labeled_selection)
    assert cell.describe() == f"method=mean_teacher {assignments} draw=0"


def test_the_committed_records_keep_their_folder_names():
    """Every record's folder is named as its own metrics.json words its labeled amount."""
    folders = [p.parent for p in RECORDS.rglob("metrics.json")]
    assert folders
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        assert LabeledAmount.of_metrics(metrics).folder == folder.parent.name, folder
        assert metrics.get("labeled_setting", folder.parent.name) == folder.parent.name, folder
