"""The figures: one fixed colour per method in every figure, methods and their variants apart, legends off the
data, a cost-vs-Dice figure."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from report_fakes import write_runs_with_a_variant  # noqa: E402
from ssl_bench.registry import method_names  # noqa: E402
from ssl_bench.report import read_runs  # noqa: E402
from ssl_bench.report.plots import (PALETTE, figure_cost_vs_dice, figure_dice_vs_fraction,  # noqa: E402
                                    figure_variants, method_colour, registered_colours, save_figure)
from ssl_bench.report.summary import summarize  # noqa: E402


# The colours the committed figures were drawn in, before each method declared its own: they stay.
COMMITTED_COLOURS = {
    "supervised": "#000000", "pi_model": "#1f77b4", "mean_teacher": "#ff7f0e", "ua_mt": "#2ca02c",
    "transform_consistency": "#d62728", "co_training": "#9467bd", "adversarial": "#8c564b", "contrastive": "#e377c2",
    "smile": "#17becf", "smiler": "#bcbd22", "cps": "#7f7f7f", "unimatch": "#aec7e8", "bcp": "#ffbb78"}


def test_every_registered_method_has_its_own_fixed_colour():
    colours = [method_colour(m) for m in method_names()]
    assert len(set(colours)) == len(colours)
    assert {m: method_colour(m) for m in COMMITTED_COLOURS} == COMMITTED_COLOURS
    assert method_colour("mean_teacher-lambda_max1.0") == method_colour("mean_teacher")
    assert method_colour("my_method") == method_colour("my_method-lr0.1")  # a stable fallback for a new name


def test_a_method_that_declares_no_colour_gets_a_free_one_of_the_palette(monkeypatch):
    """Adding a method needs no colour: it takes a palette colour no other method has, by its name, and one declared
    by the class it extends is not inherited."""
    from ssl_bench import registry
    from ssl_bench.methods.mean_teacher import MeanTeacher

    class Newcomer(MeanTeacher):
        pass

    registry.method_names()
    monkeypatch.setitem(registry._METHODS, "newcomer", Newcomer)
    registered_colours.cache_clear()
    try:
        colours = registered_colours()
        assert colours["newcomer"] in PALETTE and list(colours.values()).count(colours["newcomer"]) == 1
        assert {m: colours[m] for m in COMMITTED_COLOURS} == COMMITTED_COLOURS
    finally:
        registered_colours.cache_clear()


@pytest.fixture
def summary(tmp_path):
    runs = write_runs_with_a_variant(tmp_path / "runs", {"supervised": 1.0, "mean_teacher": 2.0})
    return summarize(read_runs(runs))


def _line_colours(fig) -> dict:
    """label (without its draw count) -> colour of every error-bar line of the figure."""
    colours = {}
    for ax in fig.axes:
        for container in ax.containers:
            label = container.get_label().split(" (")[0]
            colours.setdefault(label, set()).add(to_hex(container.lines[0].get_color()))
    return colours


def _legends_clear_of_the_data(fig) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    legends = [ax.get_legend().get_window_extent(renderer) for ax in fig.axes if ax.get_legend()]
    return bool(legends) and not any(legend.overlaps(box) for legend in legends for box in boxes)


def test_methods_and_variants_are_in_separate_figures_in_fixed_colours(summary):
    methods = [g for g in summary.fraction_groups() if not g.is_variant]
    figures = [figure_dice_vs_fraction(methods, summary.noise_floors), figure_variants(summary.fraction_groups()),
               figure_cost_vs_dice(summary)]
    try:
        main, variants, cost = (_line_colours(f) for f in figures)
        assert "mean_teacher-lambda_max1.0" not in main and "mean_teacher-lambda_max1.0" in variants
        for colours in (main, variants, cost):
            for label, found in colours.items():
                assert found == {method_colour(label)}, label
        assert {"supervised", "mean_teacher"} <= set(main) & set(variants) & set(cost)
        assert all(_legends_clear_of_the_data(f) for f in figures)
    finally:
        for f in figures:
            plt.close(f)


def test_a_figure_with_nothing_to_draw_is_not_written(tmp_path):
    assert save_figure(None, tmp_path / "x.png") is None and not (tmp_path / "x.png").exists()
