"""The report's figures. Every figure draws a method in the same colour (method_colour), variants of a method in
its colour with their own line style, error bars are the SD over draws, and legends stand beside the axes, never
on the data.

- ``dice_vs_fraction.png``: the methods as the protocol runs them (no tagged variants), per dataset Dice against
  labeled fraction, and at the compared fractions each method's difference from supervised paired by draw,
  beside the smallest detectable effect;
- ``dice_vs_fraction_variants.png``: per method with ablations, controls or other settings, those variants
  beside the method and supervised;
- ``cost_vs_dice.png``: Dice at each compared fraction against seconds per step relative to supervised;
- ``dice_vs_alpha.png``: partial-annotation sweeps, Dice per class against alpha.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ssl_bench.registry import get_method, method_names
from ssl_bench.report.groups import FULL_FRACTION, AlphaGroup, Group, alpha_reference
from ssl_bench.report.noise_floor import NoiseFloor, floor_of
from ssl_bench.report.runs import REFERENCE_METHOD
from ssl_bench.report.summary import Summary

# The colours of the methods that declare none (plot_colour, on the method's own class) and of names no registered
# method has (the records of a method since removed).
PALETTE = ("#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939",
           "#8c6d31", "#843c39", "#7b4173")
VARIANT_STYLES = (("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 2)), "P"), ((0, (3, 1, 1, 1)), "X"))
METHOD_MARKER = "o"
# Inches per panel.
PANEL_SIZE = (6.0, 4.5)
# Panels per row of the Dice-vs-alpha plot (the mean, then one per class, wrapped).
ALPHA_PANELS_PER_ROW = 3
# Ticks of the relative-cost axis.
COST_TICKS = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 50, 100)
# Horizontal offset between methods at one fraction of a side-by-side panel (in category units).
DODGE = 0.8


def _palette_start(name: str) -> int:
    """A name's place in PALETTE, the same on every machine and run."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(PALETTE)


@functools.lru_cache(maxsize=None)
def registered_colours() -> Dict[str, str]:
    """{method: colour} of every registered method: the one it declares (plot_colour), else the first free colour of
    PALETTE from its name's place on (by name order among those that declare none), so that adding a method leaves
    the others' colours alone unless they would clash."""
    declared = {name: get_method(name).__dict__.get("plot_colour") for name in method_names()}
    colours = {name: colour for name, colour in declared.items() if colour is not None}
    for name in sorted(n for n, colour in declared.items() if colour is None):
        order = [PALETTE[(_palette_start(name) + k) % len(PALETTE)] for k in range(len(PALETTE))]
        colours[name] = next((c for c in order if c not in colours.values()), order[0])
    return colours


def method_colour(method: str) -> str:
    """The colour of a method (its base name: mean_teacher-lr0.001 has mean_teacher's)."""
    base = method.split("-")[0]
    return registered_colours().get(base) or PALETTE[_palette_start(base)]


def _pyplot():
    # Here: pyplot is imported only once the Agg backend is chosen, and only by a report that draws (every ssl-bench
    # command imports ssl_bench.report for its ReportError).
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _yerr(points: Sequence[Group], pick=lambda g: g.dice) -> List[float]:
    return [0.0 if pick(g) is None or math.isnan(pick(g).std) else pick(g).std for g in points]


def _draws_label(points: Sequence[Group]) -> str:
    """How many draws each point of a line averages, e.g. "2 draws", or "draws 2/1" left to right when they differ:
    a point without error bar may be one draw, not a stable result."""
    counts = [g.dice.n for g in points]
    if len(set(counts)) == 1:
        return f"{counts[0]} draw" + ("s" if counts[0] > 1 else "")
    return "draws " + "/".join(map(str, counts))


def _method_order(methods) -> List[str]:
    return sorted(dict.fromkeys(methods), key=lambda m: (m != REFERENCE_METHOD, m))


def _side_by_side(ax, lines: Dict[str, List[Group]], fractions: List[float], styles: Dict[str, dict],
                  value=lambda g: g.dice, connect: bool = True) -> None:
    """Each line's points at categorical fraction positions, dodged so that error bars do not overlap; without
    ``connect``, points only (a line between dodged points would draw a slope that is not there)."""
    n = len(lines)
    for index, (label, points) in enumerate(lines.items()):
        points = [g for g in points if g.fraction in fractions and value(g) is not None]
        if not points:
            continue
        offset = (index - (n - 1) / 2) * DODGE / max(n, 1)
        style = dict(styles[label], **({} if connect else {"linestyle": "none"}))
        ax.errorbar([fractions.index(g.fraction) + offset for g in points], [value(g).mean for g in points],
                    yerr=_yerr(points, value), capsize=2, label=f"{label} ({_draws_label(points)})", **style)
    ax.set_xticks(range(len(fractions)), labels=[f"{f:.0%}" for f in fractions])
    ax.set_xlim(-0.6, len(fractions) - 0.4)


def _legend_beside(ax) -> None:
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def figure_dice_vs_fraction(groups: List[Group], floors: Sequence[NoiseFloor] = ()):
    """Per dataset two panels: Dice against every fraction (log axis; supervised at 100% dashed), and, at the
    fractions where methods are compared, each method's difference from supervised paired by draw, with the
    smallest detectable effect of the fraction as a grey band. One colour per method."""
    plt = _pyplot()
    datasets = list(dict.fromkeys(g.dataset for g in groups))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(PANEL_SIZE[0] * 2 + 3, PANEL_SIZE[1] * len(datasets)),
                             squeeze=False)
    for (ax_all, ax_close), dataset in zip(axes, datasets):
        members = sorted((g for g in groups if g.dataset == dataset), key=lambda g: g.fraction)
        methods = _method_order(g.method for g in members)
        styles = {m: {"color": method_colour(m), "marker": METHOD_MARKER} for m in methods}
        lines = {m: [g for g in members if g.method == m] for m in methods}
        for method, points in lines.items():
            ax_all.errorbar([g.fraction for g in points], [g.dice.mean for g in points], yerr=_yerr(points), capsize=3,
                            label=method, **styles[method])
        fractions = sorted({g.fraction for g in members})
        ax_all.set_xscale("log")
        ax_all.set_xticks(fractions, labels=[f"{f:.0%}" for f in fractions])
        ax_all.minorticks_off()
        for g in members:
            if g.method == REFERENCE_METHOD and g.fraction == FULL_FRACTION:
                ax_all.axhline(g.dice.mean, linestyle="--", color="grey", linewidth=1)
        ax_all.set(title=f"{dataset}: test Dice (error bars: SD over draws)", ylabel="test Dice (mean over classes)")
        compared = sorted({g.fraction for g in members if g.method != REFERENCE_METHOD and g.difference}) or fractions
        for position, fraction in enumerate(compared):
            floor = floor_of(list(floors), dataset, fraction)
            if floor is not None and not math.isnan(floor.detectable_effect):
                ax_close.fill_between([position - 0.5, position + 0.5], -floor.detectable_effect,
                                      floor.detectable_effect, color="grey", alpha=0.15, linewidth=0)
        ax_close.axhline(0.0, color=method_colour(REFERENCE_METHOD), linewidth=1, label=REFERENCE_METHOD)
        _side_by_side(ax_close, {m: v for m, v in lines.items() if m != REFERENCE_METHOD}, compared, styles,
                      value=lambda g: g.difference, connect=False)
        ax_close.set(title=f"{dataset}: difference from {REFERENCE_METHOD}, paired by draw",
                     ylabel=f"test Dice minus {REFERENCE_METHOD}'s (error bars: SD over draws)")
        ax_close.plot([], [], color="grey", alpha=0.3, linewidth=8, label="smallest detectable effect")
        for ax in (ax_all, ax_close):
            ax.set_xlabel("labeled fraction of the training pool")
            ax.grid(alpha=0.3)
        _legend_beside(ax_close)
    fig.tight_layout()
    return fig


def figure_variants(groups: List[Group]):
    """One panel per (dataset, method) with tagged variants: the method, its variants (its colour, other markers,
    hollow) and the supervised runs they are compared with, side by side at each fraction."""
    plt = _pyplot()
    # Variants of supervised that are the reference of other variants are drawn in those variants' panels.
    references = {(g.dataset, g.reference_method) for g in groups if g.is_variant}
    panels = list(dict.fromkeys((g.dataset, g.base_method) for g in groups if g.is_variant and not (
        g.base_method == REFERENCE_METHOD and (g.dataset, g.method) in references)))
    if not panels:
        return None
    n_cols = min(2, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=((PANEL_SIZE[0] + 3) * n_cols, PANEL_SIZE[1] * n_rows),
                             squeeze=False)
    for ax, (dataset, base) in zip(axes.flat, panels):
        variants = [g for g in groups if g.dataset == dataset and g.base_method == base and g.is_variant]
        fractions = sorted({g.fraction for g in variants})
        references = sorted({g.reference_method for g in variants} | {REFERENCE_METHOD})
        names = _method_order([*references, base, *sorted({g.method for g in variants})])
        shown = [g for g in groups if g.dataset == dataset and g.method in names and g.fraction in fractions]
        styles, n_variant = {}, 0
        for name in names:
            if name == base or name == REFERENCE_METHOD:
                styles[name] = {"color": method_colour(name), "marker": METHOD_MARKER, "linestyle": "-"}
            else:
                linestyle, marker = VARIANT_STYLES[n_variant % len(VARIANT_STYLES)]
                n_variant += 1
                styles[name] = {"color": method_colour(name), "marker": marker, "linestyle": linestyle,
                                "markerfacecolor": "white"}
        lines = {name: sorted((g for g in shown if g.method == name), key=lambda g: g.fraction) for name in names}
        _side_by_side(ax, {k: v for k, v in lines.items() if v}, fractions, styles, connect=False)
        ax.set(title=f"{dataset}: {base}, its variants and controls", xlabel="labeled fraction of the training pool",
               ylabel="test Dice (mean over classes)")
        ax.grid(alpha=0.3)
        _legend_beside(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def figure_cost_vs_dice(summary: Summary):
    """Per dataset and compared fraction: each method's Dice (± SD over draws) against its seconds per step
    relative to supervised (same hardware). Methods without a supervised run on their hardware are left out."""
    plt = _pyplot()
    groups = [g for g in summary.fraction_groups() if not g.is_variant]
    panels = []
    for dataset in dict.fromkeys(g.dataset for g in groups):
        compared = sorted({g.fraction for g in groups if g.dataset == dataset and g.method != REFERENCE_METHOD})
        panels += [(dataset, f) for f in compared]
    points = {}
    for dataset, fraction in panels:
        for g in groups:
            cost = summary.cost(g.dataset, g.method)
            relative = cost.relative_step_cost() if cost else None
            if (g.dataset, g.fraction) == (dataset, fraction) and relative is not None:
                points.setdefault((dataset, fraction), []).append((g, *relative))
    panels = [p for p in panels if p in points]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_SIZE[0] * len(panels) + 3, PANEL_SIZE[1]), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        usual = summary.usual_hardware(panel[0])
        for g, ratio, hardware in sorted(points[panel], key=lambda p: (p[0].method != REFERENCE_METHOD, p[0].method)):
            elsewhere = hardware != usual
            ax.errorbar([ratio], [g.dice.mean], yerr=_yerr([g]), capsize=3, color=method_colour(g.method),
                        marker=METHOD_MARKER, linestyle="none",
                        markerfacecolor="white" if elsewhere else method_colour(g.method),
                        label=g.method + (f" (cost on {hardware})" if elsewhere else ""))
        ratios = [ratio for _, ratio, _ in points[panel]]
        ticks = [t for t in COST_TICKS if min(ratios) / 1.5 <= t <= max(ratios) * 1.5]
        ax.set_xscale("log")
        ax.set_xticks(ticks, labels=[f"{t:g}×" for t in ticks])
        ax.minorticks_off()
        ax.set(title=f"{panel[0]}: {panel[1]:.0%} labels (error bars: SD over draws)",
               xlabel=f"seconds per step ÷ {REFERENCE_METHOD}'s (same hardware)", ylabel="test Dice (mean over classes)")
        ax.grid(alpha=0.3)
    _legend_beside(axes[0][-1])
    fig.tight_layout()
    return fig


def figure_dice_vs_alpha(groups: List[AlphaGroup]):
    """Per (dataset, fraction), panels of ALPHA_PANELS_PER_ROW: the mean over classes, then each class; a line per
    method in its colour with error bars (SD over runs: draws and training seeds); the naive baseline at alpha 0
    dashed."""
    plt = _pyplot()
    blocks = list(dict.fromkeys((g.dataset, g.fraction) for g in groups))
    n_panels = {b: 1 + len(next(g for g in groups if (g.dataset, g.fraction) == b).classes) for b in blocks}
    n_cols = min(ALPHA_PANELS_PER_ROW, max(n_panels.values()))
    block_rows = [math.ceil(n_panels[b] / n_cols) for b in blocks]
    fig, axes = plt.subplots(sum(block_rows), n_cols, figsize=(PANEL_SIZE[0] * n_cols + 2, PANEL_SIZE[1] * sum(block_rows)),
                             squeeze=False)
    first_row = 0
    for (dataset, fraction), n_rows in zip(blocks, block_rows):
        block_axes = list(axes[first_row:first_row + n_rows].flat)
        first_row += n_rows
        members = [g for g in groups if (g.dataset, g.fraction) == (dataset, fraction)]
        classes, reference = members[0].classes, alpha_reference(groups, dataset, fraction)
        panels = [("mean over classes", lambda g: g.dice)] + [(c, lambda g, c=c: g.class_dice[c]) for c in classes]
        methods = _method_order(g.method for g in members)
        for ax, (title, pick) in zip(block_axes, panels):
            for method in methods:
                points = sorted((g for g in members if g.method == method), key=lambda g: g.alpha)
                variant = method != method.split("-")[0]
                ax.errorbar([g.alpha for g in points], [pick(g).mean for g in points], yerr=_yerr(points, pick),
                            capsize=3, label=method, color=method_colour(method), marker="s" if variant else METHOD_MARKER,
                            linestyle="--" if variant else "-")
            if reference:
                ax.axhline(pick(reference).mean, linestyle="--", color="grey", label=f"{REFERENCE_METHOD}, alpha 0")
            ax.set(title=f"{dataset}: {title}", xlabel="alpha (share of cases missing each annotation)",
                   ylabel="test Dice", ylim=(0.0, 1.0))
            ax.grid(alpha=0.3)
        _legend_beside(block_axes[min(len(panels), len(block_axes)) - 1])
        for ax in block_axes[len(panels):]:
            ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_dice_vs_fraction(groups: List[Group], path: Path, floors: Sequence[NoiseFloor] = ()) -> Path:
    return save_figure(figure_dice_vs_fraction(groups, floors), path)


def plot_variants(groups: List[Group], path: Path) -> Optional[Path]:
    return save_figure(figure_variants(groups), path)


def plot_cost_vs_dice(summary: Summary, path: Path) -> Optional[Path]:
    return save_figure(figure_cost_vs_dice(summary), path)


def plot_dice_vs_alpha(groups: List[AlphaGroup], path: Path) -> Path:
    return save_figure(figure_dice_vs_alpha(groups), path)


def save_figure(fig, path: Path) -> Optional[Path]:
    """Writes ``fig`` (None: nothing to draw, nothing written) and closes it."""
    if fig is None:
        return None
    plt = _pyplot()
    # savefig writes in pieces: write beside the target, then rename, so a kill never leaves half a PNG.
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
