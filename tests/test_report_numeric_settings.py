"""A method in another numeric setting (trainer.precision) against its own runs in the protocol's, on constructed runs."""

import numpy as np
import pytest
from scipy.stats import wilcoxon

from report_fakes import DICE, case_dice, write_config, write_fake_run
from ssl_bench.report import load_runs, write_report
from ssl_bench.report.numeric_settings import compare_settings

BF16 = "mean_teacher-precisionbf16-mixed"
# Per draw: the bf16 run's cases, a little off the 32-true mean_teacher run's (DICE) in both directions.
SHIFT = {0: {"c1": (0.01, 0.0), "c2": (-0.02, 0.0), "c3": (0.005, 0.0)},
         1: {"c1": (-0.01, 0.0), "c2": (0.03, 0.0), "c3": (0.0, 0.0)}}


@pytest.fixture
def runs_with_bf16(tmp_path):
    runs = tmp_path / "runs"
    for (method, fraction, draw), cases in DICE.items():
        write_fake_run(runs, method, fraction, draw, cases)
        write_config(runs / "toy" / method / f"frac{fraction}" / f"draw{draw}", method, data__draw=draw)
    for draw in (0, 1):
        base = DICE["mean_teacher", 0.5, draw]
        cases = {c: tuple(v + s for v, s in zip(base[c], SHIFT[draw][c])) for c in base}
        write_fake_run(runs, "mean_teacher", 0.5, draw, cases, folder_name=BF16)
        write_config(runs / "toy" / BF16 / "frac0.5" / f"draw{draw}", "mean_teacher", data__draw=draw,
                     trainer__precision="bf16-mixed", run__tag="precisionbf16-mixed")
    # A tagged run that changes the method itself is no numeric setting: not compared here.
    write_fake_run(runs, "mean_teacher", 0.5, 0, DICE["mean_teacher", 0.5, 0], folder_name="mean_teacher-lambda_max1.0")
    write_config(runs / "toy" / "mean_teacher-lambda_max1.0" / "frac0.5" / "draw0", "mean_teacher",
                 method__lambda_max=1.0, run__tag="lambda_max1.0")
    return runs


def test_a_precision_variant_is_paired_with_the_same_methods_runs_by_draw(runs_with_bf16):
    comparison, = compare_settings(load_runs(runs_with_bf16))
    assert (comparison.method, comparison.protocol_method, comparison.fraction) == (BF16, "mean_teacher", 0.5)
    assert comparison.setting == "trainer.precision: bf16-mixed vs 32-true"
    assert [(p.draw, p.reference.method) for p in comparison.pairs] == [(0, "mean_teacher"), (1, "mean_teacher")]
    ours, theirs = [], []
    for draw in (0, 1):
        for case in ("c1", "c2", "c3"):
            reference = case_dice(("mean_teacher", 0.5, draw), case)
            shifted = [v + s for v, s in zip(DICE["mean_teacher", 0.5, draw][case], SHIFT[draw][case])]
            ours.append(float(np.nanmean(shifted)))
            theirs.append(reference)
    assert comparison.test.n_pairs == 6
    assert comparison.test.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue)
    per_draw = [np.mean(ours[3 * d:3 * d + 3]) - np.mean(theirs[3 * d:3 * d + 3]) for d in (0, 1)]
    assert comparison.difference.mean == pytest.approx(np.mean(per_draw))


def test_the_report_shows_the_settings_table(runs_with_bf16, tmp_path):
    write_report(runs_with_bf16, tmp_path / "out", records=False, sweeps_dir=None)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "### Numeric settings against the protocol's" in text
    assert f"| {BF16} | mean_teacher | 0.5 | trainer.precision: bf16-mixed vs 32-true | 2 |" in text
    assert "mean_teacher-lambda_max1.0 | mean_teacher" not in text
