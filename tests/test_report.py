"""The report: summary.csv from fake run folders, mean ± std and t-intervals over draws, the paired Wilcoxon test,
the plot, the W&B summary run and errors."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.stats import wilcoxon

from report_fakes import BEST_OFFSET, DICE, PRIMARY, case_dice as _case_dice, write_config as _write_config
from report_fakes import write_fake_run as _write_fake_run
from ssl_bench.cli import main
from ssl_bench.report import (Run, alpha_line, load_runs, protocol_differences, summarize_alpha, summarize_groups,
                              summarize_replicates, write_report)
from ssl_bench.report.plots import _draws_label

T_975_ONE_DEGREE_OF_FREEDOM = 12.706204736174707  # Student's t, 97.5% quantile, 1 degree of freedom
# A partial-annotation sweep (folders <method>-alpha<a>), per-case Dice by (method, alpha, draw).
ALPHA_DICE = {
    ("supervised", 0.0, 0): {"c1": (0.90, 0.80), "c2": (0.86, 0.78)},
    ("supervised", 0.7, 0): {"c1": (0.40, 0.10), "c2": (0.30, 0.20)},
    ("smile", 0.7, 0): {"c1": (0.85, 0.60), "c2": (0.80, 0.50)},
    ("smile", 0.7, 1): {"c1": (0.83, 0.66), "c2": (0.75, 0.55)},
}


@pytest.fixture
def fake_runs(tmp_path):
    runs = tmp_path / "runs"
    metrics = {key: _write_fake_run(runs, *key, cases) for key, cases in DICE.items()}
    return runs, metrics


def test_summary_csv_has_one_row_per_run_with_the_numbers_of_metrics_json(fake_runs, tmp_path):
    runs, metrics = fake_runs
    paths = write_report(runs, tmp_path / "results")
    with open(paths["csv"]) as f:
        rows = {(r["method"], float(r["fraction"]), int(r["draw"])): r for r in csv.DictReader(f)}
    assert set(rows) == set(DICE)
    row = rows["mean_teacher", 0.5, 1]
    assert row["primary_model"] == "teacher" and row["dataset"] == "toy"
    # By hand: the teacher's last checkpoint; c3's class b is NaN, so class b is the mean of two cases.
    assert float(row["last_dice_a"]) == pytest.approx((0.74 + 0.70 + 0.69) / 3)
    assert float(row["last_dice_b"]) == pytest.approx((0.58 + 0.50) / 2)
    assert float(row["last_dice_mean"]) == pytest.approx((0.66 + 0.60 + 0.69) / 3)
    assert float(row["best_dice_mean"]) == pytest.approx((0.66 + 0.60 + 0.69) / 3 + BEST_OFFSET)
    assert float(row["last_hd95_a"]) == pytest.approx(10 * (1 - (0.74 + 0.70 + 0.69) / 3))
    assert float(row["seconds_per_step"]) == 1.25 and float(row["wall_time_s"]) == 101.0
    assert float(row["peak_memory_mb"]) == 512.5 and int(row["n_parameters"]) == 1000
    for key, m in metrics.items():  # every number exactly as metrics.json has it
        assert float(rows[key]["last_dice_mean"]) == m["results"]["last"][PRIMARY[key[0]]]["dice_mean"]
        assert float(rows[key]["best_hd95_mean"]) == m["results"]["best"][PRIMARY[key[0]]]["hd95_mean"]


def test_mean_std_and_t_interval_over_draws(fake_runs, tmp_path):
    runs, metrics = fake_runs
    groups = {(g.method, g.fraction): g for g in summarize_groups(load_runs(runs))}
    draws = [metrics["mean_teacher", 0.5, d]["results"]["last"]["teacher"]["dice_mean"] for d in (0, 1)]
    mean, std = (draws[0] + draws[1]) / 2, abs(draws[0] - draws[1]) / math.sqrt(2)
    dice = groups["mean_teacher", 0.5].dice
    assert (dice.n, dice.mean, dice.std) == (2, pytest.approx(mean), pytest.approx(std))
    half = T_975_ONE_DEGREE_OF_FREEDOM * std / math.sqrt(2)
    assert (dice.low, dice.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    full = groups["supervised", 1.0].dice
    assert full.n == 1 and math.isnan(full.std) and math.isnan(full.low)

    text = write_report(runs, tmp_path / "results")["markdown"].read_text()
    assert f"| mean_teacher | 0.5 | 2 | 2 | {mean:.3f} ± {std:.3f} | [{mean - half:.3f}, {mean + half:.3f}] |" in text
    assert f"| supervised | 1 | 1 | 1 | {full.mean:.3f} | n=1, no interval |" in text


def test_wilcoxon_pairs_cases_within_draws_and_equals_scipy(fake_runs, tmp_path):
    runs, _ = fake_runs
    groups = {(g.method, g.fraction): g for g in summarize_groups(load_runs(runs))}
    ours, theirs = [], []
    for draw in (0, 1):
        for case_id in ("c1", "c2", "c3"):
            ours.append(_case_dice(("mean_teacher", 0.5, draw), case_id))
            theirs.append(_case_dice(("supervised", 0.5, draw), case_id))
    test = groups["mean_teacher", 0.5].vs_reference
    assert test.n_pairs == 6
    assert test.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue, rel=1e-12)
    assert test.median_difference == pytest.approx(float(np.median(np.subtract(ours, theirs))))
    assert groups["supervised", 0.5].vs_reference is None  # the reference itself
    assert groups["supervised", 1.0].vs_reference is None
    assert test.n_better == sum(o > t for o, t in zip(ours, theirs))
    text = write_report(runs, tmp_path / "results")["markdown"].read_text()
    assert f"p={test.p_value:.3g} (6 pairs)" in text

    # Per run pair: the same test on each draw's three pairs alone, next to both runs' mean Dice.
    per_draw = groups["mean_teacher", 0.5].pairs
    assert [d.draw for d in per_draw] == [0, 1]
    for d, (o, t) in zip(per_draw, [(ours[:3], theirs[:3]), (ours[3:], theirs[3:])]):
        assert d.test.n_pairs == 3
        assert d.test.p_value == pytest.approx(wilcoxon(o, t).pvalue, rel=1e-12)
        assert d.test.n_better == sum(a > b for a, b in zip(o, t))
        assert (d.dice, d.reference_dice) == pytest.approx((np.mean(o), np.mean(t)))
        row = (f"| mean_teacher | 0.5 | {d.draw} | {d.draw} | unknown | {d.dice:.3f} | {d.reference_dice:.3f} | "
               f"{d.test.median_difference:+.3f} | {d.test.p_value:.3g} | {d.test.n_better}/3 |")
        assert row in text
    assert groups["supervised", 0.5].pairs == []


def test_plot_is_a_png(fake_runs, tmp_path):
    import matplotlib.image
    runs, _ = fake_runs
    png = write_report(runs, tmp_path / "results")["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).ndim == 3
    assert not list(png.parent.glob(".*"))  # no temporary file left behind


def test_plot_legend_says_how_many_draws_each_line_averages(fake_runs):
    runs, _ = fake_runs
    groups = {(g.method, g.fraction): g for g in summarize_groups(load_runs(runs))}
    assert _draws_label([groups["mean_teacher", 0.5]]) == "2 draws"
    assert _draws_label([groups["supervised", 1.0]]) == "1 draw"
    assert _draws_label([groups["supervised", 0.5], groups["supervised", 1.0]]) == "draws 2/1"


def test_variant_is_compared_with_the_supervised_run_of_its_tag():
    run = Run("mean_teacher-lr0.001", {"method": "mean_teacher"}, {}, None)
    assert run.reference_method == "supervised-lr0.001"


@pytest.mark.parametrize("changes, compared", [
    ({"method__lambda_max": 1.0, "run__tag": "lambda_max1.0", "logging__wandb": False}, True),
    ({"optim__lr": 0.001, "run__tag": "lambda_max1.0"}, False),  # not only a method setting: no baseline
    # Regression: a supervised run made before data.partial.alpha existed is the baseline of a newer variant
    # that has the key at its default, not of one that changes it.
    ({"method__lambda_max": 1.0, "partial_alpha": 0.0}, True),
    ({"method__lambda_max": 1.0, "partial_alpha": 0.5}, False),
])
def test_variant_of_a_method_setting_is_compared_with_the_untagged_supervised_run(tmp_path, changes, compared):
    runs = tmp_path / "runs"
    for draw in (0, 1):
        _write_fake_run(runs, "supervised", 0.5, draw, DICE[("supervised", 0.5, draw)])
        _write_config(runs / "toy" / "supervised" / "frac0.5" / f"draw{draw}", "supervised")
        _write_fake_run(runs, "mean_teacher", 0.5, draw, DICE[("mean_teacher", 0.5, draw)],
                        folder_name="mean_teacher-lambda_max1.0")
        _write_config(runs / "toy" / "mean_teacher-lambda_max1.0" / "frac0.5" / f"draw{draw}", "mean_teacher", **changes)
    variant = next(g for g in summarize_groups(load_runs(runs)) if g.method == "mean_teacher-lambda_max1.0")
    if compared:
        ours, theirs = ([_case_dice((m, 0.5, d), c) for d in (0, 1) for c in ("c1", "c2", "c3")] for m in
                        ("mean_teacher", "supervised"))
        assert variant.reference_method == "supervised"
        assert variant.vs_reference.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue)
    else:
        assert variant.reference_method == "supervised-lambda_max1.0" and variant.vs_reference is None


@pytest.mark.parametrize("own_pretraining", [True, False])
def test_variant_of_a_pretrained_method_is_compared_with_the_untagged_supervised_run(tmp_path, own_pretraining):
    """contrastive-slab_thickness16 (a pretraining setting): its init_from is its own stage's backbone when
    metrics.json names that pretraining, so the untagged supervised run is its baseline; a backbone from
    elsewhere is a protocol change, and there is then no baseline."""
    runs = tmp_path / "runs"
    folder = "contrastive-slab_thickness16"
    for method, name in (("supervised", "supervised"), ("contrastive", folder)):
        metrics = _write_fake_run(runs, method, 0.5, 0, DICE[(method if method == "supervised" else "mean_teacher", 0.5, 0)],
                                  folder_name=name)
        run = runs / "toy" / name / "frac0.5" / "draw0"
        _write_config(run, method)
        if method == "contrastive":
            config = OmegaConf.load(run / "config.yaml")
            config.method.slab_thickness, config.model = 16, {"init_from": "pretrain/checkpoints/backbone.pt"}
            (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
            if own_pretraining:
                (run / "metrics.json").write_text(json.dumps({**metrics, "pretrain_run_dir": "pretrain"}))
    variant = next(g for g in summarize_groups(load_runs(runs)) if g.method == folder)
    assert (variant.reference_method == "supervised") == own_pretraining
    assert (variant.vs_reference is not None) == own_pretraining and variant.protocol_differences == []


def test_a_comparison_that_differs_in_protocol_settings_is_flagged(tmp_path):
    runs = tmp_path / "runs"
    for method in ("supervised", "mean_teacher"):
        for draw in (0, 1):
            _write_fake_run(runs, method, 0.5, draw, DICE[(method, 0.5, draw)])
            # mean_teacher with its own lambda_max (its setting: fine) and dropout (a protocol setting: flagged)
            changes = {"method__lambda_max": 1.0, "model__dropout": 0.1} if method == "mean_teacher" else {}
            config = {"method": {"name": method, "lambda_max": 0.1}, "data": {"name": "toy", "fraction": 0.5, "draw": draw},
                      "model": {"dropout": 0.0}, "run": {"tag": None}}
            for key, value in changes.items():
                section, name = key.split("__")
                config[section][name] = value
            (runs / "toy" / method / "frac0.5" / f"draw{draw}" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    groups = {g.method: g for g in summarize_groups(load_runs(runs))}
    assert groups["mean_teacher"].protocol_differences == ["model.dropout: 0.1 vs 0.0"]
    assert groups["supervised"].protocol_differences == []
    # contrastive's initialisation comes from its own pretraining stage (metrics.json says so): not flagged.
    pretrained = Run("contrastive", {"pretrain_run_dir": "runs/toy/contrastive_pretrain/draw0"}, {}, tmp_path)
    reference = Run("supervised", {}, {}, runs / "toy" / "supervised" / "frac0.5" / "draw0")
    config = OmegaConf.load(reference.folder / "config.yaml")
    config.model.init_from = "backbone.pt"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(config))
    assert protocol_differences(pretrained, reference) == []
    user_given = Run("supervised", {}, {}, tmp_path)  # the same init_from given by hand is a protocol change
    assert protocol_differences(user_given, reference) == ["model.init_from: backbone.pt vs None"]
    text = write_report(runs, tmp_path / "results")["markdown"].read_text()
    assert "p=" in text and "‡" in text
    assert "- `mean_teacher` at 0.5 vs `supervised`: model.dropout: 0.1 vs 0.0" in text


def _rows(csv_path: Path) -> dict:
    with open(csv_path) as f:
        return {(r["method"], float(r["fraction"]), int(r["draw"])): r for r in csv.DictReader(f)}


def _row_count(csv_path: Path) -> int:
    with open(csv_path) as f:
        return len(list(csv.DictReader(f)))


def test_records_stand_in_for_run_folders_that_are_gone(fake_runs, tmp_path):
    runs, _ = fake_runs
    out = tmp_path / "results"
    first = _rows(write_report(runs, out)["csv"])
    for folder in (p.parent for p in runs.rglob("metrics.json")):
        record = out / "records" / folder.relative_to(runs)
        for name in ("metrics.json", "per_case.csv"):
            assert (record / name).read_bytes() == (folder / name).read_bytes()
    shutil.rmtree(runs)
    paths = write_report(runs, out)
    again = _rows(paths["csv"])
    assert set(again) == set(DICE)
    for key, row in first.items():
        assert {k: v for k, v in again[key].items() if k != "run_dir"} == {k: v for k, v in row.items() if k != "run_dir"}
        assert again[key]["run_dir"].startswith(str(out / "records"))
    text = paths["markdown"].read_text()
    assert f"{len(DICE)} finished runs: 0 under `{runs}`, {len(DICE)} from records" in text
    assert "p=" in text, "the paired tests are computed from the records' per-case Dice"


def test_a_run_folder_on_disk_replaces_its_record(fake_runs, tmp_path):
    runs, _ = fake_runs
    out = tmp_path / "results"
    write_report(runs, out)
    metrics_path = runs / "toy" / "supervised" / "frac0.5" / "draw0" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["seconds_per_step"] = 9.5  # the cell was run again
    metrics_path.write_text(json.dumps(metrics))
    rows = _rows(write_report(runs, out)["csv"])
    assert len(rows) == len(DICE) and float(rows["supervised", 0.5, 0]["seconds_per_step"]) == 9.5
    record = out / "records" / metrics_path.relative_to(runs)
    assert json.loads(record.read_text())["seconds_per_step"] == 9.5


def test_records_inside_the_runs_folder_are_not_counted_twice(fake_runs):
    runs, _ = fake_runs
    write_report(runs, runs / "results")
    assert len(_rows(write_report(runs, runs / "results")["csv"])) == len(DICE)
    shutil.rmtree(runs / "toy")  # only the records are left, inside runs_dir: read once, not copied into themselves
    assert len(_rows(write_report(runs, runs / "results")["csv"])) == len(DICE)
    assert not (runs / "results" / "records" / "results").exists()


def test_no_records_reports_only_the_run_folders(fake_runs, tmp_path, capsys):
    runs, _ = fake_runs
    out = tmp_path / "results"
    write_report(runs, out)
    shutil.rmtree(runs / "toy" / "mean_teacher")
    assert main(["report", str(runs), "--out", str(out), "--no-wandb", "--no-records"]) == 0
    assert {k[0] for k in _rows(out / "summary.csv")} == {"supervised"}
    assert (out / "records" / "toy" / "mean_teacher").is_dir(), "--no-records leaves the records alone"


def test_a_report_of_your_own_runs_goes_into_their_folder_and_leaves_the_committed_results_alone(
        fake_runs, tmp_path, monkeypatch, capsys):
    """`make report` with no RUNS after a toy run (`ssl-bench report` in the project folder) wrote the committed
    results/summary.*, its figures and results/records/<dataset>: now it writes runs/report, whose records are not
    read back as runs; a records folder reports into the folder that holds it (`make report RUNS=results/records`
    rebuilds results/)."""
    runs, _ = fake_runs
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "results" / "summary.md"
    committed.parent.mkdir()
    committed.write_text("the committed report")
    assert main(["report", "--no-wandb"]) == 0
    assert committed.read_text() == "the committed report" and sorted(committed.parent.iterdir()) == [committed]
    report = runs / "report"
    assert f"wrote {Path('runs') / 'report' / 'summary.csv'}" in capsys.readouterr().out
    assert (report / "dice_vs_fraction.png").is_file() and (report / "records" / "toy").is_dir()
    assert main(["report", "--no-wandb", "--no-records"]) == 0  # its own records are not run folders
    assert _row_count(report / "summary.csv") == len(DICE)
    shutil.rmtree(runs / "toy")
    assert main(["report", str(report / "records"), "--no-wandb"]) == 0
    assert _row_count(report / "summary.csv") == len(DICE)
    assert committed.read_text() == "the committed report"


def test_report_without_finished_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "results"), "--no-wandb"]) == 2
    assert f"no finished runs (no readable metrics.json) under {tmp_path}" in capsys.readouterr().err


@pytest.fixture
def partial_runs(tmp_path):
    """Partial-annotation runs beside an ordinary one; smile at alpha 0.7, draw 1, predates metrics.json's
    partial_alpha and has it only in its config.yaml."""
    runs = tmp_path / "runs"
    for (method, alpha, draw), cases in ALPHA_DICE.items():
        legacy = (method, alpha, draw) == ("smile", 0.7, 1)
        m = _write_fake_run(runs, method, 1.0, draw, cases, f"{method}-alpha{alpha}", None if legacy else alpha)
        if legacy:
            (Path(m["run_dir"]) / "config.yaml").write_text(f"data:\n  partial:\n    alpha: {alpha}\n")
    _write_fake_run(runs, "supervised", 0.5, 0, DICE["supervised", 0.5, 0])
    return runs


def _run_mean(cases):
    return float(np.mean([np.mean(dice) for dice in cases.values()]))


def test_alpha_line_strips_only_the_alpha_tag_of_the_runs_own_alpha():
    assert alpha_line(Run("smile-alpha0.5", {"method": "smile"}, {}, None, 0.5)) == "smile"
    assert alpha_line(Run("smile-x-alpha0.5", {"method": "smile"}, {}, None, 0.5)) == "smile-x"
    assert alpha_line(Run("mean_teacher-lr0.001", {"method": "mean_teacher"}, {}, None, 0.0)) is None
    assert alpha_line(Run("smile-alpha0.5", {"method": "smile"}, {}, None, 0.3)) is None  # not its alpha
    assert alpha_line(Run("supervised", {"method": "supervised"}, {}, None, 0.0)) is None


def test_dice_against_alpha_per_class_over_draws(partial_runs, tmp_path):
    groups = {(g.method, g.alpha): g for g in summarize_alpha(load_runs(partial_runs))}
    assert set(groups) == {("supervised", 0.0), ("supervised", 0.7), ("smile", 0.7)}  # not the plain run
    smile = groups["smile", 0.7]
    draws = [_run_mean(ALPHA_DICE["smile", 0.7, d]) for d in (0, 1)]
    assert (smile.dice.n, smile.dice.mean) == (2, pytest.approx(np.mean(draws)))
    assert smile.dice.std == pytest.approx(abs(draws[0] - draws[1]) / math.sqrt(2))
    assert smile.class_dice["b"].mean == pytest.approx(np.mean([0.60, 0.50, 0.66, 0.55]))

    paths = write_report(partial_runs, tmp_path / "results")
    text = paths["markdown"].read_text()
    assert "## toy: partial annotations (fraction 1)" in text
    reference = _run_mean(ALPHA_DICE["supervised", 0.0, 0])
    assert f"| 0.7 | smile | 2 (2 × 1) | {smile.dice.mean:.3f} ± {smile.dice.std:.3f} | {min(draws):.3f} – {max(draws):.3f} |" in text
    # Versus the naive baseline at alpha 0: the difference of means, then the paired test over draw 0's cases.
    ours = [np.mean(ALPHA_DICE["smile", 0.7, 0][c]) for c in ("c1", "c2")]
    theirs = [np.mean(ALPHA_DICE["supervised", 0.0, 0][c]) for c in ("c1", "c2")]
    assert smile.vs_full.n_pairs == 2
    assert smile.vs_full.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue)
    versus = f"{np.median(np.subtract(ours, theirs)):+.3f}, p={smile.vs_full.p_value:.3g} (2 pairs)"
    assert f"| {smile.dice.mean - reference:+.3f} ({versus}) |" in text
    assert groups["supervised", 0.0].vs_full is None
    assert paths["alpha_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["plot"].is_file()  # the plain supervised run still has its Dice-vs-fraction plot


def test_training_seeds_of_one_alpha_cell_are_one_distribution_paired_by_seed(tmp_path):
    """smile_hippocampus's cells: one draw, training seeds 0-2 (folders <method>-alpha<a>-seed<s>). The seeds of a
    (method, alpha) form one group, mean ± SD over them with their range, compared seed by seed with supervised at
    alpha 0; before, each seed was a method line of its own with no spread."""
    runs = tmp_path / "runs"
    seeds = {0: (0.30, 0.20), 1: (0.80, 0.70), 2: (0.60, 0.50)}  # smile at alpha 0.7: the seed decides
    for seed, (c1, c2) in seeds.items():
        for method, alpha, cases in (("smile", 0.7, {"c1": (c1, c1), "c2": (c2, c2)}),
                                     ("supervised", 0.0, {"c1": (0.9, 0.9), "c2": (0.8 + seed / 100, 0.8)})):
            m = _write_fake_run(runs, method, 1.0, 0, cases, f"{method}-alpha{alpha}-seed{seed}", alpha)
            _write_config(Path(m["run_dir"]), method, partial_alpha=alpha, seed=seed)
            m["results"]["last"][PRIMARY[method]]["confusion_mean"] = 0.1 * seed  # where the structures merged
            (Path(m["run_dir"]) / "metrics.json").write_text(json.dumps(m))
    groups = {(g.method, g.alpha): g for g in summarize_alpha(load_runs(runs))}
    assert set(groups) == {("supervised", 0.0), ("smile", 0.7)}
    smile = groups["smile", 0.7]
    means = [np.mean(seeds[s]) for s in (0, 1, 2)]
    assert (smile.draws, smile.seeds, smile.dice.n) == (1, 3, 3)
    assert (smile.dice.mean, smile.dice.std) == (pytest.approx(np.mean(means)), pytest.approx(np.std(means, ddof=1)))
    assert smile.dice_range == (pytest.approx(min(means)), pytest.approx(max(means)))
    assert smile.class_dice["a"].std == pytest.approx(np.std(means, ddof=1))  # each case has c1 or c2 in both classes
    # Each seed is paired with the baseline of its own seed; the draw's runs are averaged case by case: 2 pairs.
    assert smile.vs_full.n_pairs == 2
    text = write_report(runs, tmp_path / "results")["markdown"].read_text()
    assert f"| 0.7 | smile | 3 (1 × 3) | {smile.dice.mean:.3f} ± {smile.dice.std:.3f} |" in text
    assert (smile.confusion.n, smile.confusion.mean) == (3, pytest.approx(0.1))
    assert "| confusion |" in text and f"| {smile.confusion.mean:.3f} ± {smile.confusion.std:.3f} |" in text


def test_only_partial_runs_write_no_fraction_plot(partial_runs, tmp_path):
    import shutil
    shutil.rmtree(partial_runs / "toy" / "supervised")
    paths = write_report(partial_runs, tmp_path / "results")
    assert "plot" not in paths and not (tmp_path / "results" / "dice_vs_fraction.png").exists()
    assert paths["alpha_plot"].is_file()


def test_training_seed_replicates_are_compared_with_the_run_of_the_draws_seed(tmp_path):
    """Runs differing only in trainer.seed (or not at all: a repeat shows nondeterminism) form one replicate set,
    untagged run first; a run that also changes another setting is no replicate."""
    runs = tmp_path / "runs"
    replicas = {  # folder: (per-case Dice, config changes)
        "supervised": (DICE[("supervised", 0.5, 0)], {}),
        "supervised-seed100": (DICE[("supervised", 0.5, 1)], {"trainer": {"seed": 100}}),
        "supervised-lr0.001": (DICE[("mean_teacher", 0.5, 0)], {"trainer": {"seed": 101}, "optim": {"lr": 0.001}}),
        "supervised-again": (DICE[("mean_teacher", 0.5, 1)], {"trainer": {"seed": 0}}),  # the draw's seed, set
    }
    for folder, (cases, changes) in replicas.items():
        _write_fake_run(runs, "supervised", 0.5, 0, cases, folder_name=folder)
        config = OmegaConf.merge({"data": {"name": "toy", "fraction": 0.5, "draw": 0}, "optim": {"lr": 0.002},
                                  "trainer": {"seed": None}, "run": {"tag": folder.partition("-")[2]}}, changes)
        (runs / "toy" / folder / "frac0.5" / "draw0" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (replicate_set,) = summarize_replicates(load_runs(runs))
    assert [(r.method, r.seed) for r in replicate_set.replicates] == [
        ("supervised", 0), ("supervised-again", 0), ("supervised-seed100", 100)]
    first, _, second = replicate_set.replicates
    assert first.vs_first is None
    ours, theirs = ([_case_dice(("supervised", 0.5, d), c) for c in ("c1", "c2", "c3")] for d in (1, 0))
    assert second.vs_first.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue)
    assert second.dice == pytest.approx(np.mean(ours)) and replicate_set.dice.n == 3
    text = write_report(runs, tmp_path / "results")["markdown"].read_text()
    assert "### Replicates" in text and "| supervised-seed100 | 100 | unknown |" in text
