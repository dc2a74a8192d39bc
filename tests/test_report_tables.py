"""summary.md's tables: the headline (methods) and the variants apart, cost, the test-selection audit."""

import numpy as np
import pytest

from report_fakes import DICE, TEST_BEST_OFFSET, write_config, write_fake_run
from ssl_bench.report import read_runs, summarize_groups
from ssl_bench.report.summary import summarize
from ssl_bench.report.tables import markdown

PARAMETERS = {"supervised": 1000, "mean_teacher": 1000}


@pytest.fixture
def runs_with_a_variant(tmp_path):
    runs = tmp_path / "runs"
    for (method, fraction, draw), cases in DICE.items():
        write_fake_run(runs, method, fraction, draw, cases, seconds_per_step=1.0 if method == "supervised" else 2.5)
        write_config(runs / "toy" / method / f"frac{fraction}" / f"draw{draw}", method, data__draw=draw)
    for draw in (0, 1):  # mean_teacher with another lambda_max: a variant of a method-only setting
        write_fake_run(runs, "mean_teacher", 0.5, draw, DICE["supervised", 0.5, draw], folder_name="mean_teacher-lambda_max1.0",
                       seconds_per_step=3.0)
        write_config(runs / "toy" / "mean_teacher-lambda_max1.0" / "frac0.5" / f"draw{draw}", "mean_teacher",
                     method__lambda_max=1.0, run__tag="lambda_max1.0", data__draw=draw)
    return runs


def _table(text: str, title: str) -> str:
    return text.split(f"### {title}")[1].split("\n### ")[0]


def test_headline_has_methods_and_the_variants_are_apart(runs_with_a_variant):
    summary = summarize(read_runs(runs_with_a_variant))
    groups = {(g.method, g.fraction): g for g in summary.groups}
    text = markdown(summary)
    methods, variants = _table(text, "Methods"), _table(text, "Ablations, controls and other settings")
    mt = groups["mean_teacher", 0.5]
    test = mt.vs_reference
    assert (f"| mean_teacher | {mt.dice.mean:.3f} ± {mt.dice.std:.3f} ({test.mean_difference:+.3f}, "
            f"p={test.p_value:.2g})" in methods)
    assert "| method | 50% labels | 100% labels | s/step ÷ supervised | trained parameters |" in methods
    assert "| 2.5× | 1,000 |" in methods  # median s/step 2.5 against supervised's 1.0, on the same (unknown) hardware
    sup_full = groups["supervised", 1.0]
    assert f"| supervised | {groups['supervised', 0.5].dice.mean:.3f}" in methods and f"{sup_full.dice.mean:.3f} [1 draw]" in methods
    assert "lambda_max1.0" not in methods
    assert "| mean_teacher-lambda_max1.0 | supervised | " in variants and "| 3.0× |" in variants


def test_test_selected_checkpoint_and_its_inflation(tmp_path):
    """Runs with a "test_best" result (the checkpoint best on the test cases): shown beside last and best on val,
    with the test-selection inflation, the mean over draws of test_best minus last."""
    runs = tmp_path / "runs"
    for (method, fraction, draw), cases in DICE.items():
        write_fake_run(runs, method, fraction, draw, cases, test_best=True)
    loaded = read_runs(runs)
    groups = {(g.method, g.fraction): g for g in summarize_groups(loaded.runs)}
    mt = groups["mean_teacher", 0.5]
    last = [r.result("last")["dice_mean"] for r in mt.runs]
    assert mt.test_best_dice.mean == pytest.approx(np.mean(last) + TEST_BEST_OFFSET)
    assert mt.test_selection_inflation.mean == pytest.approx(TEST_BEST_OFFSET)
    text = markdown(summarize(loaded))
    assert "Dice best on test" in _table(text, "Every method and fraction")
    audit = _table(text, "Test-set selection")
    assert f"| mean_teacher | 0.5 | 2 | {mt.dice.mean:.3f} ± {mt.dice.std:.3f} | " in audit
    assert f"| +{TEST_BEST_OFFSET:.3f} ± 0.000 |" in audit


def test_without_test_selected_rows_the_column_is_omitted(runs_with_a_variant):
    text = markdown(summarize(read_runs(runs_with_a_variant)))
    assert "best on test" not in text and "Test-set selection" not in text
