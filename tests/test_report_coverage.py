"""The report lists the cells of the sweeps its runs belong to that have no result (a stopped sweep, a failed cell)."""

import pytest

from report_fakes import DICE, write_config, write_fake_run
from ssl_bench.cli import main
from ssl_bench.report import read_runs
from ssl_bench.report.coverage import NOT_RUN, STARTED, sweep_coverage, sweeps_of

SWEEP = """data: synthetic
methods: [supervised, mean_teacher]
fractions: [0.5]
draws: [0, 1]
"""


@pytest.fixture
def stopped_sweep(tmp_path):
    """A sweep stopped after two of its four cells, a third one started (its folder has a config, no metrics)."""
    sweeps, runs = tmp_path / "sweeps", tmp_path / "runs"
    sweeps.mkdir()
    (sweeps / "toy_sweep.yaml").write_text(SWEEP)
    for method, draw in (("supervised", 0), ("mean_teacher", 0)):
        write_fake_run(runs, method, 0.5, draw, DICE[method, 0.5, draw], dataset="synthetic")
        write_config(runs / "synthetic" / method / "frac0.5" / f"draw{draw}", method, tags=["sweep=toy_sweep"])
    started = runs / "synthetic" / "mean_teacher" / "frac0.5" / "draw1"
    started.mkdir(parents=True)
    write_config(started, "mean_teacher", tags=["sweep=toy_sweep"])
    return sweeps, runs


def test_missing_cells_of_a_stopped_sweep(stopped_sweep):
    sweeps, runs = stopped_sweep
    loaded = read_runs(runs)
    assert sweeps_of(loaded.runs) == ["toy_sweep"]
    (coverage,) = sweep_coverage(loaded.runs, sweeps, runs)
    assert coverage.n_cells == 4
    assert sorted((c.method, c.draw, c.state) for c in coverage.missing) == [
        ("mean_teacher", 1, STARTED), ("supervised", 1, NOT_RUN)]


def test_the_report_command_says_which_cells_are_missing(stopped_sweep, tmp_path, capsys):
    """Regression: after a stopped sweep the report said "2 finished runs" and nothing about the other cells."""
    sweeps, runs = stopped_sweep
    out = tmp_path / "results"
    assert main(["report", str(runs), "--out", str(out), "--no-wandb", "--sweeps-dir", str(sweeps)]) == 0
    err = capsys.readouterr().err
    assert "sweep toy_sweep: 2 of 4 cells have no result" in err and "method=supervised fraction=0.5 draw=1" in err
    text = (out / "summary.md").read_text()
    assert "- `toy_sweep` (" in text and "2 of 4 cells have no result" in text
    assert "  - mean_teacher: 0.5 draw 1 (started, not finished)" in text
    assert "  - supervised: 0.5 draw 1" in text


def test_a_sweep_without_its_file_is_named(stopped_sweep, tmp_path):
    sweeps, runs = stopped_sweep
    (sweeps / "toy_sweep.yaml").unlink()
    (coverage,) = sweep_coverage(read_runs(runs).runs, sweeps)
    assert coverage.missing == [] and "no sweep file toy_sweep.yaml" in coverage.problem


def test_runs_and_sweep_cells_with_a_number_of_labeled_patients_are_reported(tmp_path):
    """Regression: a run of data.n_labeled (metrics.json fraction null, e.g. ACDC's 3 or 7 labeled patients) made
    the report fail on float(None). It takes its place at its labeled share of the training cases; SSL4MIS's own
    patients (labeled_selection first) are a line of their own; a sweep's count cells are listed when missing."""
    import json
    sweeps, runs = tmp_path / "sweeps", tmp_path / "runs"
    sweeps.mkdir()
    (sweeps / "count_sweep.yaml").write_text("data: synthetic\nmethods: [supervised, mean_teacher]\n"
                                             "n_labeled: [2]\ndraws: [0]\n")
    for method, selection in (("supervised", "draw"), ("mean_teacher", "draw"), ("supervised", "first")):
        metrics = write_fake_run(runs, method, 0.5, 0, DICE[method, 0.5, 0], dataset="synthetic",
                                 folder_name=method if selection == "draw" else f"{method}-x")
        folder = runs / "synthetic" / (method if selection == "draw" else f"{method}-x") / "frac0.5" / "draw0"
        metrics.update({"fraction": None, "labeled_setting": "labeled2" + ("-first" if selection == "first" else ""),
                        "labeled_selection": selection, "n_labeled_patients": 2})
        (folder / "metrics.json").write_text(json.dumps(metrics))
        write_config(folder, method, tags=["sweep=count_sweep"])
    loaded = read_runs(runs)
    assert sorted((r.line, r.fraction) for r in loaded.runs) == [
        ("mean_teacher", 0.5), ("supervised", 0.5), ("supervised-x-first", 0.5)]
    (coverage,) = sweep_coverage(loaded.runs, sweeps, runs)
    assert {(c.method, c.labeled) for c in coverage.missing} == {("supervised", "labeled2"), ("mean_teacher", "labeled2")}
    out = tmp_path / "results"
    assert main(["report", str(runs), "--out", str(out), "--no-wandb", "--sweeps-dir", str(sweeps)]) == 0
    assert "mean_teacher: labeled2 draw 0" in (out / "summary.md").read_text()


def test_a_fraction_folder_with_a_labeled_selection_is_worded():
    """Regression: a missing cell at a fraction with a labeled selection (LA's frac1.0-first_then_draw) stopped the
    report with a ValueError."""
    from ssl_bench.report.coverage import _labeled
    assert _labeled("frac1.0-first_then_draw") == "1-first_then_draw"
    assert _labeled("frac0.05") == "0.05" and _labeled("labeled7-first") == "labeled7-first"
