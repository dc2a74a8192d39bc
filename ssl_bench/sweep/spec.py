"""A sweep file and its cells: methods x labeled fractions x draws (x any extra config axis), each cell an ordinary
run of train().

A sweep file (``experiments/sweeps/<name>.yaml``) is validated against ``SweepConfig``::

    data: hippocampus                    # experiments/data/<data>.yaml
    methods: all                         # every registered method, or a list of names
    fractions: [0.05, 0.1, 0.2]          # labeled fractions, each in (0, 1]
    n_labeled: [3, 7]                    # and/or numbers of labeled patients (folders labeled<n>)
    labeled_selections: [draw, first]    # data.labeled_selection of every cell (default [draw])
    draws: [0, 1, 2]                     # split draws
    extra_cells:                         # (method, fraction or n_labeled) cells outside the grid, for every draw
      - {method: supervised, fraction: 1.0}  # and axis value, with the first of labeled_selections
      - {method: ua_mt, n_labeled: 16}
      - {method: smiler, fraction: 1.0, settings: {method.relabel_criterion: mc_dropout}}  # a method's variant
    axes:                                # extra axes crossed with everything: dotted config key -> values
      optim.lr: [0.001, 0.002]           # e.g. trainer.seed: [100, 101] for training-seed replicates
    skip_cells:                          # cells that would repeat another: a method and axis values they all match
      - {method: smiler, data.partial.alpha: 0.0}   # smiler at alpha 0 is smile (nothing to relabel)
    overrides: [trainer.max_steps=500]   # config overrides applied to every cell
    launcher: local                      # local | slurm
    local: {jobs: 1}                     # cells at once on this machine (its CPU threads and GPUs split between them)
    slurm: {partition: gpu, gpus_per_node: 1, nodes: 1, cpus_per_task: 8, mem_gb: 32, timeout_min: 240}
    name: hippocampus                    # sweep id (default: the file's name)

A cell's folder is ``run_dir(cfg)``; a cell on an extra axis gets ``run.tag=<last key part><value>`` (e.g.
``lr0.001``, ``seed100``, joined to any run.tag of the overrides) so that its folder differs from its neighbours';
an extra cell's own ``settings`` (config keys of that cell alone, e.g. a setting only its method has) are tagged
the same way, before the axes (``smiler-relabel_criterionmc_dropout-alpha0.5``).
Cells run draw by draw (then by extra-axis value, labeled amount and method), so the first draw is complete first.

Each cell's state is found when the sweep is loaded, by the rules of ssl_bench/run/identity.py that train() follows:
finished when its run folder holds a readable result of its config; refused when the folder holds a run of another
config (its differing keys named: use run.tag or --force); pending otherwise, with a metrics.json that does not
parse named (the cell runs and train() evaluates it again). With a records folder (``--records results/records``,
the copies ``ssl-bench report`` keeps), a cell whose record holds a run of its config counts as finished too, so a
sweep continued on another machine or disk runs only what no record holds; a record of another config, or one
that does not parse, is named and its cell runs. ``--only key=value ...`` keeps the cells that match (a key given
twice matches either value); a key of an extra cell's settings matches by each cell's config, so
``--only trainer.seed=100`` keeps the seed-100 replicates and ``trainer.seed=null`` the grid beside them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf

from ssl_bench.config import ConfigError, load_config, read_schema_file
from ssl_bench.data.splits import SELECTIONS
from ssl_bench.records import keep_record
from ssl_bench.registry import get_method, method_names
from ssl_bench.run.identity import (CONFIG_FILE, METRICS_FILE, UnreadableResult, config_differences, finished_result,
                                    read_metrics)
from ssl_bench.run.labeled import LabeledAmount
from ssl_bench.run.paths import run_dir
from ssl_bench.run.run_lock import clear_run_folder, run_folder_lock

LAUNCHERS = ("local", "slurm")
PENDING, FINISHED, RECORDED, REFUSED = "pending", "finished", "recorded", "refused"
ALL_METHODS = "all"
# Keys a cell sets itself; an override or an extra axis on them would silently collide with the grid.
CELL_KEYS = ("data.fraction", "data.n_labeled", "data.labeled_selection", "data.draw")
# What --only selects cells by, besides the sweep's axes.
SELECTION_KEYS = ("method", "fraction", "n_labeled", "labeled_selection", "draw")


class SweepError(ConfigError):
    """A sweep file that cannot be run; the message names the file and the key."""


@dataclass
class ExtraCell:
    method: str
    # One of the two: a labeled fraction or a number of labeled patients.
    fraction: Optional[float] = None
    n_labeled: Optional[int] = None
    # Dotted config key -> value of this cell alone, tagged like an axis: a variant the grid's other methods lack.
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def amount(self) -> Tuple[str, Any]:
        return ("fraction", self.fraction) if self.n_labeled is None else ("n_labeled", self.n_labeled)


@dataclass
class SlurmConfig:
    partition: str = ""  # empty: the cluster's default partition
    # One task per GPU (Lightning's SLURM DDP); 0 runs CPU-only jobs of one task.
    gpus_per_node: int = 1
    nodes: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    timeout_min: int = 240


@dataclass
class LocalConfig:
    # Cells at once on this machine, each in its own process. With jobs > 1 each cell gets cpu_count // jobs
    # threads (OMP_NUM_THREADS, unless the environment sets it) and its share of the visible GPUs
    # (CUDA_VISIBLE_DEVICES; GPUs are shared round-robin when there are fewer than jobs). `--jobs N` overrides it.
    jobs: int = 1


@dataclass
class SweepConfig:
    data: str = "hippocampus"
    methods: Any = ALL_METHODS  # "all" or a list of names: a union type, checked in _validate
    fractions: List[float] = field(default_factory=list)
    # Numbers of labeled patients (data.n_labeled), crossed with the methods like the fractions.
    n_labeled: List[int] = field(default_factory=list)
    labeled_selections: List[str] = field(default_factory=lambda: ["draw"])
    draws: List[int] = field(default_factory=lambda: [0])
    extra_cells: List[ExtraCell] = field(default_factory=list)
    axes: Dict[str, Any] = field(default_factory=dict)
    # Each entry: "method" and/or axis keys with one value; the cells (grid or extra) matching all of them do not run.
    skip_cells: List[Dict[str, Any]] = field(default_factory=list)
    overrides: List[str] = field(default_factory=list)
    launcher: str = "local"
    local: LocalConfig = field(default_factory=LocalConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    name: str = ""


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: what train() gets, and the folder it writes."""
    method: str
    data: str
    fraction: Optional[float]  # None: n_labeled patients are labeled
    draw: int
    axis_values: Tuple[Tuple[str, Any], ...]
    overrides: Tuple[str, ...]
    run_dir: Path
    # The run folder below the runs folder (<dataset>/<method>/frac<f>/draw<d>), which is also its record's path.
    relative_dir: Path = Path()
    # A record of this cell's run (same config) that stands in for a missing run folder; see the module docstring.
    record: Optional[Path] = None
    # PENDING, FINISHED (its run folder), RECORDED (its record) or REFUSED (its run folder holds a run of another
    # config), as load_sweep found it; ``note`` says why a cell is refused.
    status: str = PENDING
    note: str = ""
    force: bool = False  # --force: start over whatever its folder holds
    n_labeled: Optional[int] = None
    labeled_selection: str = "draw"
    # An extra cell's own settings (ExtraCell.settings), as (key, value) pairs.
    settings: Tuple[Tuple[str, Any], ...] = ()

    def describe(self) -> str:
        axes = "".join(f" {key}={text(value)}" for key, value in self.settings + self.axis_values)
        amount = LabeledAmount(self.fraction, self.n_labeled, self.labeled_selection).assignments
        return f"method={self.method} {amount} draw={self.draw}{axes}"

    def finished(self) -> bool:
        return self.status in (FINISHED, RECORDED)

    def state(self) -> str:
        return f"recorded in {self.record}" if self.status == RECORDED else self.status

    def value(self, key: str) -> Any:
        """The cell's value of a selection key (SELECTION_KEYS, or one of the sweep's axes)."""
        own = {"method": self.method, "fraction": self.fraction, "n_labeled": self.n_labeled,
               "labeled_selection": self.labeled_selection, "draw": self.draw}
        return own[key] if key in own else dict(self.axis_values).get(key)

    def config(self):
        return load_config(self.method, self.data, list(self.overrides))

    def run_config(self):
        """The config the cell's run saves (config.yaml), without the work its method's prepare_run does."""
        return get_method(self.method).run_config(self.config())

    def start_over_if_forced(self) -> None:
        """``--force``: the cell's run folder is emptied before the cell starts (or is submitted), as `train --force`
        does, under its lock: a folder another run is writing is refused (RunFolderBusy), not emptied under it."""
        if self.force and self.run_dir.exists():
            with run_folder_lock(self.run_dir):
                clear_run_folder(self.run_dir)

    def command(self) -> List[str]:
        return [sys.executable, "-m", "ssl_bench.cli", "train", "--method", self.method, "--data", self.data,
                *self.overrides]


@dataclass
class Sweep:
    config: SweepConfig
    source: Path
    cells: List[Cell]
    # Where each cell's record is kept as soon as it finishes (--records; the module's docstring).
    records_dir: Optional[Path] = None

    def keep_record(self, cell: Cell) -> None:
        if self.records_dir is not None and (cell.run_dir / METRICS_FILE).is_file():
            keep_record(cell.run_dir, self.records_dir / cell.relative_dir)


def load_sweep(path: Path, overrides: Optional[List[str]] = None, records_dir: Optional[Path] = None,
               force: bool = False, jobs: Optional[int] = None, only: Sequence[str] = (), states: bool = True,
               also_recorded_in: Sequence[Path] = ()) -> Sweep:
    """The validated sweep of ``path`` with its cells and their states; ``overrides`` are applied to every cell after
    the file's. With ``records_dir``, cells whose matching record is there count as finished (the module's
    docstring); so do those with one in ``also_recorded_in`` (folders that are read, never written). With ``force`` every cell is pending and starts over. ``jobs`` overrides ``local.jobs``. ``only``:
    key=value terms that select cells (select_cells); a term whose key is no selection key (SELECTION_KEYS, the
    sweep's axes, the extra cells' settings keys) is a config override.
    ``states=False`` leaves every cell pending without looking at its folder (for a list of the cells alone)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"no sweep file {path}")
    spec: SweepConfig = read_schema_file(SweepConfig, path, SweepError)  # e.g. an extra cell without a fraction
    spec.name = spec.name or path.stem
    setting_keys = tuple(dict.fromkeys(key for extra in spec.extra_cells for key in extra.settings))
    selection = [t for t in only if t.split("=", 1)[0] in (*SELECTION_KEYS, *spec.axes, *setting_keys)]
    spec.overrides = list(spec.overrides) + list(overrides or []) + [t for t in only if t not in selection]
    if jobs is not None:
        if spec.launcher != "local":
            raise SweepError(f"--jobs {jobs}: {path} has launcher '{spec.launcher}'; --jobs sets how many cells run at "
                             "once on this machine (launcher: local)")
        spec.local.jobs = jobs
    _validate(spec, path)
    if records_dir is not None and not Path(records_dir).is_dir():
        raise SweepError(f"no records folder {records_dir}")
    records = Path(records_dir) if records_dir is not None else None
    cells = select_cells(_expand(spec, path), selection, path, tuple(spec.axes), setting_keys)
    if force:
        return Sweep(spec, path, [replace(cell, force=True) for cell, _ in cells], records)
    if not states:
        return Sweep(spec, path, [cell for cell, _ in cells], records)
    lookups = ([records] if records is not None else []) + [Path(r) for r in also_recorded_in]
    return Sweep(spec, path, [_with_state(cell, cfg, lookups) for cell, cfg in cells], records)


def select_cells(cells: List[Tuple[Cell, DictConfig]], terms: Sequence[str], source: Path,
                 axes: Sequence[str] = (), setting_keys: Sequence[str] = ()) -> List[Tuple[Cell, DictConfig]]:
    """The (cell, config) pairs whose cell matches every key of ``terms`` (``key=value``; keys: SELECTION_KEYS, the
    sweep's axes and the extra cells' ``setting_keys``, read from each cell's config; a key given twice matches
    either value; values read as YAML, so 0.1 matches 0.10 and 1 matches 1.0)."""
    if not terms:
        return cells
    keys = (*SELECTION_KEYS, *axes, *setting_keys)

    def cell_value(cell: Cell, cfg: DictConfig, key: str) -> Any:  # None where cfg has no such key (another method's)
        return OmegaConf.select(cfg, key) if key in setting_keys else cell.value(key)

    wanted: Dict[str, List[Any]] = {}
    for term in terms:
        key, equals, value = term.partition("=")
        if not equals or key not in keys:
            raise SweepError(f"--only {term}: expected key=value, the key one of {', '.join(keys)}")
        wanted.setdefault(key, []).append(yaml.safe_load(value))
    selected = [(cell, cfg) for cell, cfg in cells
                if all(any(_same(cell_value(cell, cfg, key), wanted_value) for wanted_value in values)
                       for key, values in wanted.items())]
    if not selected:
        raise SweepError(f"{source}: no cell matches --only {' '.join(terms)}")
    return selected


def _same(ours: Any, theirs: Any) -> bool:
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(theirs, numbers) and not isinstance(ours, bool):
        return float(ours) == float(theirs)
    return ours == theirs or str(ours) == str(theirs)


def describe_cells(sweep: Sweep) -> str:
    """One line per cell with its state and folder (``ssl-bench sweep --dry-run``)."""
    return "\n".join(f"{k}/{len(sweep.cells)} {c.state():8} {c.describe()}  {c.run_dir}"
                     for k, c in enumerate(sweep.cells, 1))


def _with_state(cell: Cell, cfg: DictConfig, records_dirs: Sequence[Path]) -> Cell:
    """``cell`` with its state: finished when its run folder holds a finished run of its config, refused when the
    folder holds a run of another config, recorded when one of ``records_dirs`` holds a record of its config. A result that
    does not parse, or a record of another config, is reported and does not count: its cell runs. ``cfg``: the
    cell's config."""
    cfg = get_method(cell.method).run_config(cfg)
    try:
        if finished_result(cell.run_dir, cfg) is not None:
            return replace(cell, status=FINISHED)
    except ConfigError as err:
        return replace(cell, status=REFUSED, note=str(err))
    except UnreadableResult as err:
        warn(f"{err}: its cell will run (evaluated again from its last checkpoint)")
    unusable = []
    for records_dir in records_dirs:
        folder = records_dir / cell.relative_dir
        if not (folder / METRICS_FILE).is_file():
            continue
        problem = _record_problem(folder, cfg)
        if not problem:
            return replace(cell, status=RECORDED, record=folder)
        unusable.append(f"record {folder} {problem}")
    for line in unusable:
        warn(f"{line}: its cell will run")
    return cell


def _record_problem(folder: Path, cfg) -> str:
    """Why a record does not stand for a run of ``cfg`` (its result or config cannot be read, or it is another
    config's), or "" when it does."""
    try:
        read_metrics(folder / METRICS_FILE)
        if not (folder / CONFIG_FILE).is_file():
            return f"has no {CONFIG_FILE}"
        differing = config_differences(folder / CONFIG_FILE, cfg)
    except (ConfigError, UnreadableResult) as err:
        return f"is unusable ({err})"
    return f"has another config ({', '.join(differing[:8])} differ)" if differing else ""


def warn(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


def _validate(spec: SweepConfig, path: Path) -> None:
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise SweepError(f"{path}: {key}: {msg}")

    registered = method_names()
    need(spec.methods == ALL_METHODS or (isinstance(spec.methods, list) and spec.methods), "methods",
         f"must be '{ALL_METHODS}' or a non-empty list of method names")
    need(bool(spec.fractions) or bool(spec.n_labeled), "fractions",
         "must list at least one labeled fraction (or n_labeled: numbers of labeled patients)")
    need(all(n >= 1 for n in spec.n_labeled), "n_labeled",
         f"numbers of labeled patients must be >= 1, got {spec.n_labeled}")
    need(bool(spec.labeled_selections) and set(spec.labeled_selections) <= set(SELECTIONS), "labeled_selections",
         f"must list some of {', '.join(SELECTIONS)}, got {spec.labeled_selections}")
    cells = [("methods", "fractions", name, fraction) for name in _methods(spec)
             for fraction in spec.fractions or [1.0]]  # n_labeled only: the methods are checked all the same
    for i, c in enumerate(spec.extra_cells):
        need((c.fraction is None) != (c.n_labeled is None), f"extra_cells[{i}]", "give one of fraction and n_labeled")
        need(c.n_labeled is None or c.n_labeled >= 1, f"extra_cells[{i}].n_labeled", "must be >= 1")
        for key in c.settings:
            need(key not in CELL_KEYS + ("method.name", "run.tag") + tuple(spec.axes), f"extra_cells[{i}].settings",
                 f"'{key}' is set by the grid or names the cell's method or tag")
    cells += [(f"extra_cells[{i}].method", f"extra_cells[{i}].fraction", c.method, c.fraction or 1.0)
              for i, c in enumerate(spec.extra_cells)]
    for method_key, fraction_key, name, fraction in cells:
        need(name in registered, method_key, f"unknown method '{name}' (registered: {', '.join(registered)})")
        need(0.0 < fraction <= 1.0, fraction_key, f"labeled fraction must be in (0, 1], got {fraction}")
    need(bool(spec.draws) and min(spec.draws) >= 0, "draws", "must list at least one draw, each >= 0")
    for key, values in spec.axes.items():
        need(isinstance(values, list) and bool(values), f"axes.{key}", "must be a non-empty list of values")
        need(key not in CELL_KEYS, f"axes.{key}", "is set by the grid: use fractions / n_labeled / draws")
    short_names = [key.rsplit(".", 1)[-1] for key in spec.axes]
    need(len(set(short_names)) == len(short_names), "axes", "two keys end in the same name; run tags would clash")
    swept = set(_methods(spec)) | {c.method for c in spec.extra_cells}
    for i, skip in enumerate(spec.skip_cells):
        need(bool(skip) and set(skip) <= {"method", *spec.axes}, f"skip_cells[{i}]",
             f"must give some of method, {', '.join(spec.axes) or '(no axes)'}, got {', '.join(skip) or 'nothing'}")
        for key, value in skip.items():
            if key == "method":
                need(value in swept, f"skip_cells[{i}].method",
                     f"'{value}' is none of the sweep's methods ({', '.join(sorted(swept))})")
            else:
                need(value in spec.axes[key], f"skip_cells[{i}].{key}",
                     f"{value!r} is none of the axis's values {spec.axes[key]}")
    for override in spec.overrides:
        need(override.split("=", 1)[0] not in CELL_KEYS + tuple(spec.axes), "overrides",
             f"'{override}' sets a key the grid sets for each cell")
    need(spec.launcher in LAUNCHERS, "launcher", f"must be one of {', '.join(LAUNCHERS)}, got '{spec.launcher}'")
    need(spec.local.jobs >= 1, "local.jobs", f"must be >= 1, got {spec.local.jobs}")
    s = spec.slurm
    need(s.gpus_per_node >= 0 and s.nodes >= 1, "slurm", "needs gpus_per_node >= 0 and nodes >= 1")
    need(s.gpus_per_node > 0 or s.nodes == 1, "slurm.nodes", "CPU-only jobs (gpus_per_node: 0) run on one node")


def _methods(spec: SweepConfig) -> List[str]:
    return method_names() if spec.methods == ALL_METHODS else list(spec.methods)


def _expand(spec: SweepConfig, path: Path) -> List[Tuple[Cell, DictConfig]]:
    """Every cell once with its config, in run order (draw, axis values, selection, labeled amount, method; extra
    cells after each draw's grid)."""
    amounts = [("fraction", f) for f in spec.fractions] + [("n_labeled", n) for n in spec.n_labeled]
    quads = [(amount, m, selection, ()) for selection in spec.labeled_selections for amount in amounts
             for m in _methods(spec)] + [(c.amount, c.method, spec.labeled_selections[0], tuple(c.settings.items()))
                                         for c in spec.extra_cells]
    axis_keys = list(spec.axes)
    cells: Dict[Path, Tuple[Cell, DictConfig]] = {}
    for draw, axis_combo in product(spec.draws, product(*spec.axes.values())):
        axis_values = tuple(zip(axis_keys, axis_combo))
        for amount, method, selection, settings in quads:
            if any(_matches(skip, method, axis_values) for skip in spec.skip_cells):
                continue
            cell, cfg = _cell(spec, path, method, amount, draw, axis_values, selection, settings)
            cells.setdefault(cell.run_dir, (cell, cfg))  # an extra cell that is also in the grid runs once
    return list(cells.values())


def _matches(skip: Dict[str, Any], method: str, axis_values: Tuple[Tuple[str, Any], ...]) -> bool:
    """Whether a cell of ``method`` at ``axis_values`` is one that the skip_cells entry ``skip`` leaves out."""
    values = {"method": method, **dict(axis_values)}
    return all(values[key] == value for key, value in skip.items())


def _cell(spec: SweepConfig, path: Path, method: str, amount: Tuple[str, Any], draw: int,
          axis_values: Tuple[Tuple[str, Any], ...], selection: str = "draw",
          settings: Tuple[Tuple[str, Any], ...] = ()) -> Tuple[Cell, DictConfig]:
    kind, count = amount  # ("fraction", f) or ("n_labeled", n)
    # The selection only where it is not the default, so that the cells of older sweeps keep their command lines.
    chosen = () if selection == "draw" else (f"data.labeled_selection={selection}",)
    # JSON is YAML, so every axis value (number, string, list) reads back as itself in a dotlist.
    overrides = (*spec.overrides, f"data.{kind}={count}", *chosen, f"data.draw={draw}",
                 f"logging.tags=[sweep={spec.name}]",
                 *(f"{key}={json.dumps(value)}" for key, value in settings + axis_values))
    fraction, n_labeled = (count, None) if kind == "fraction" else (None, count)
    cell = Cell(method, spec.data, fraction, draw, axis_values, overrides, run_dir=Path(), n_labeled=n_labeled,
                labeled_selection=selection, settings=settings)
    try:
        cfg = cell.config()
        axis_tag = "-".join(f"{key.rsplit('.', 1)[-1]}{text(value)}" for key, value in settings + axis_values)
        if axis_tag:
            tag = "-".join(filter(None, (cfg.run.tag, axis_tag)))
            cell = replace(cell, overrides=overrides + (f"run.tag={tag}",))
            cfg.run.tag = tag  # what the override gives, without merging every file again
    except ConfigError as err:
        raise SweepError(f"{path}: cell {cell.describe()}: {err}") from None
    folder = run_dir(cfg)
    return replace(cell, run_dir=folder, relative_dir=folder.relative_to(cfg.run.runs_dir)), cfg


def text(value: Any) -> str:
    """An axis value in a progress line or a run tag: lists without spaces, so tags stay one word."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)
