"""summary.md's tables: the headline (methods) and the variants apart, cost, the test-selection audit."""

import json

import numpy as np
import pytest
from scipy.stats import wilcoxon

from report_fakes import DICE, H200, TEST_BEST_OFFSET, write_fake_run, write_runs_with_a_variant
from ssl_bench.report import read_runs, summarize_groups
from ssl_bench.report.summary import summarize
from ssl_bench.report.tables import markdown

@pytest.fixture
def runs_with_a_variant(tmp_path):
    return write_runs_with_a_variant(tmp_path / "runs", {"supervised": 1.0, "mean_teacher": 2.5,
                                                         "mean_teacher-lambda_max1.0": 3.0})


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
    assert mt.test_selection.best_on_test.mean == pytest.approx(np.mean(last) + TEST_BEST_OFFSET)
    assert mt.test_selection.inflation.mean == pytest.approx(TEST_BEST_OFFSET)
    text = markdown(summarize(loaded))
    assert "Dice best on test" in _table(text, "Every method and fraction")
    audit = _table(text, "Test-set selection")
    assert f"| mean_teacher | 0.5 | 2 | {mt.dice.mean:.3f} ± {mt.dice.std:.3f} | " in audit
    assert f"| +{TEST_BEST_OFFSET:.3f} ± 0.000 |" in audit


def test_the_audit_table_holds_only_the_runs_that_have_the_audit(tmp_path):
    """Regression: its "Dice last" averaged every replicate while "best on test" averaged the audited ones, so the
    inflation was not the difference of its columns. A replicate without the audit (an older record), 0.1 higher,
    must not move the audit table."""
    runs = tmp_path / "runs"
    for (method, fraction, draw), cases in DICE.items():
        write_fake_run(runs, method, fraction, draw, cases, test_best=True)
        if method == "mean_teacher":
            write_fake_run(runs, method, fraction, draw, {c: [d + 0.1 for d in v] for c, v in cases.items()},
                           provenance=H200, draw_folder=f"draw{draw}@nvidia-h200")
    groups = {(g.method, g.fraction): g for g in summarize_groups(read_runs(runs).runs)}
    mt = groups["mean_teacher", 0.5]
    audited = mt.test_selection
    assert audited.last.mean == pytest.approx(mt.dice.mean - 0.05)  # the group's Dice holds the replicates too
    assert audited.best_on_test.mean - audited.last.mean == pytest.approx(audited.inflation.mean)
    assert audited.inflation.mean == pytest.approx(TEST_BEST_OFFSET)
    audit = _table(markdown(summarize(read_runs(runs))), "Test-set selection")
    assert f"| mean_teacher | 0.5 | 2 | {audited.last.mean:.3f} ± {audited.last.std:.3f} | " in audit


def test_without_test_selected_rows_the_column_is_omitted(runs_with_a_variant):
    text = markdown(summarize(read_runs(runs_with_a_variant)))
    assert "best on test" not in text and "Test-set selection" not in text


def test_without_replicates_the_noise_floor_says_how_to_get_them(runs_with_a_variant):
    floor = _table(markdown(summarize(read_runs(runs_with_a_variant))), "Noise floor")
    assert "| 0.5 | 0 (0) | — |" in floor and "No replicates yet" in floor and "trainer.seed" in floor


def test_jaccard_and_asd_columns_where_the_records_have_them(tmp_path):
    runs = tmp_path / "runs"
    for (method, fraction, draw), cases in DICE.items():
        write_fake_run(runs, method, fraction, draw, cases, surfaces=method == "mean_teacher")
    summary = summarize(read_runs(runs))
    table = _table(markdown(summary), "Every method and fraction")
    assert "| Jaccard | HD95 | ASD |" in table
    mt = next(g for g in summary.groups if g.method == "mean_teacher")
    sup = next(g for g in summary.groups if g.method == "supervised" and g.fraction == 0.5)
    assert sup.jaccard is None and mt.jaccard.n == 2
    by_draw = [np.mean([np.nanmean([d / (2 - d) for d in dice]) for dice in DICE["mean_teacher", 0.5, draw].values()])
               for draw in (0, 1)]
    assert mt.jaccard.mean == pytest.approx(np.mean(by_draw))
    assert f"| {mt.jaccard.mean:.3f} ± {mt.jaccard.std:.3f} | " in table
    plain = tmp_path / "plain"
    write_fake_run(plain, "supervised", 0.5, 0, DICE["supervised", 0.5, 0])
    assert "Jaccard" not in markdown(summarize(read_runs(plain)))


def test_each_method_is_paired_with_its_own_variants_run_by_run(runs_with_a_variant):
    """mean_teacher against mean_teacher-lambda_max1.0 (a control or ablation), by draw and case: what the method's
    own setting changes, apart from the comparison of each with supervised."""
    summary = summarize(read_runs(runs_with_a_variant))
    (comparison,) = summary.variants
    assert (comparison.method.method, comparison.variant.method) == ("mean_teacher", "mean_teacher-lambda_max1.0")
    assert [(p.draw, p.run.method, p.reference.method) for p in comparison.pairs] == [
        (d, "mean_teacher", "mean_teacher-lambda_max1.0") for d in (0, 1)]
    ours = [np.nanmean(DICE["mean_teacher", 0.5, d][c]) for d in (0, 1) for c in ("c1", "c2", "c3")]
    theirs = [np.nanmean(DICE["supervised", 0.5, d][c]) for d in (0, 1) for c in ("c1", "c2", "c3")]  # its Dice
    assert comparison.test.n_pairs == 6 and comparison.test.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue)
    assert comparison.difference.mean == pytest.approx(np.mean(ours) - np.mean(theirs))
    table = _table(markdown(summary), "Methods against their controls and ablations")
    assert (f"| mean_teacher | mean_teacher-lambda_max1.0 | 0.5 | 2 | {comparison.method.dice.mean:.3f} ± "
            f"{comparison.method.dice.std:.3f} | {comparison.variant.dice.mean:.3f} ± "
            f"{comparison.variant.dice.std:.3f} | {comparison.difference.mean:+.3f} |") in table


def test_a_column_of_runs_that_asked_for_a_number_of_labeled_cases_is_headed_by_it(tmp_path):
    """Left Atrium cells ask for 4 or 8 labeled cases (data.n_labeled): the table says "4 labeled (5.6%)", as the
    papers count them, where every run at that fraction asked for the same number; fractions stay "50% labels"."""
    runs = tmp_path / "runs"
    for method in ("supervised", "mean_teacher"):
        m = write_fake_run(runs, method, 0.5, 0, DICE[method, 0.5, 0])
        m["n_labeled_patients_asked"] = 4
        (tmp_path / "runs" / "toy" / method / "frac0.5" / "draw0" / "metrics.json").write_text(json.dumps(m))
    write_fake_run(runs, "supervised", 1.0, 0, DICE["supervised", 1.0, 0])
    text = markdown(summarize(read_runs(runs)))
    assert "| method | 4 labeled (50%) | 100% labels |" in _table(text, "Methods")
