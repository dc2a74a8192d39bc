"""A queue file, experiments/queues/<name>.yaml: which sweep cells a GPU window runs, in priority order.

    check:                  # the short gpu-check a window starts with (ssl_bench/tools/gpu_check.py); omit it for none
      data: la_half
      methods: [supervised, ua_mt]
      steps: 10
      budget_s: 90
      overrides: [protocol=la_gpu]
    pack: 0                 # cells at once; 0: one on a CPU, on a GPU as many as the bundle and max_pack allow
    entries:                # in priority order; each: the cells of a sweep file, optionally selected
      - {sweep: la_gpu, only: [draw=0]}

A cell already finished (a record in the committed results/records or in the bundle a window resumes from) never
runs again; a cell listed by two entries runs once, at its first place. An entry whose dataset is absent on the
machine (e.g. ACDC, which users import themselves) is skipped and said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ssl_bench.config import ConfigError, read_schema_file
from ssl_bench.data.dataset import resolve_dataset
from ssl_bench.sweep.spec import Cell, load_sweep
from ssl_bench.utils.errors import first_line

QUEUES_DIR = Path(__file__).resolve().parents[2] / "experiments" / "queues"
SWEEPS_DIR = Path(__file__).resolve().parents[2] / "experiments" / "sweeps"


@dataclass
class CheckConfig:
    data: str = "hippocampus"
    methods: List[str] = field(default_factory=lambda: ["supervised"])
    steps: int = 10       # timed steps per method (make perf's --steps)
    budget_s: float = 90.0  # the check is stopped after this long; its table says how far it got
    overrides: List[str] = field(default_factory=list)


@dataclass
class QueueEntry:
    sweep: str = ""  # a sweep file's name in experiments/sweeps, or a path to one
    only: List[str] = field(default_factory=list)  # `ssl-bench sweep --only` terms
    overrides: List[str] = field(default_factory=list)


@dataclass
class QueueConfig:
    check: Optional[CheckConfig] = None
    pack: int = 0
    # Cells at once with pack 0 on a GPU: small 3D networks leave most of an H100 idle, so several share it; more
    # than this split its CPU threads too thinly for their data loading.
    max_pack: int = 4
    # After the stop signal, how long the cells get to finish their step, score their selected checkpoints and
    # exit before they are killed (a killed cell resumes from its latest validation instead).
    stop_grace_s: float = 60.0
    # No cell starts with less of the budget left than this: it would spend it on imports and data loading.
    min_start_s: float = 30.0
    entries: List[QueueEntry] = field(default_factory=list)


@dataclass
class Queue:
    config: QueueConfig
    source: Path
    cells: List[Cell]
    skipped: List[str]  # an entry left out, and why (its dataset is absent)

    @property
    def name(self) -> str:
        return self.source.stem


def queue_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return QUEUES_DIR / f"{name_or_path}.yaml"


def _sweep_path(entry: QueueEntry, source: Path) -> Path:
    path = Path(entry.sweep)
    if path.suffix in (".yaml", ".yml"):
        return path if path.is_absolute() or path.exists() else source.parent / path
    return SWEEPS_DIR / f"{entry.sweep}.yaml"


def read_queue_config(path: Path) -> QueueConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no queue file {path} (queues: {', '.join(sorted(p.stem for p in QUEUES_DIR.glob('*.yaml')))})")
    spec: QueueConfig = read_schema_file(QueueConfig, path)
    if not spec.entries:
        raise ConfigError(f"{path}: entries: the queue lists no cells")
    for k, entry in enumerate(spec.entries):
        if not entry.sweep:
            raise ConfigError(f"{path}: entries[{k}].sweep: every entry names a sweep file")
    for key, value in (("pack", spec.pack), ("max_pack", spec.max_pack)):
        if value < 0:
            raise ConfigError(f"{path}: {key}={value}: must be >= 0")
    return spec


def load_queue(path: Path, overrides: List[str], records_dirs: List[Path]) -> Queue:
    """The queue of ``path`` with its cells in order, ``overrides`` applied to each (after the sweep's and the
    entry's). A cell recorded in any of ``records_dirs`` (with the same config) or finished in its run folder counts
    as finished."""
    path = Path(path)
    spec = read_queue_config(path)
    cells: List[Cell] = []
    seen = set()
    skipped: List[str] = []
    records = [Path(r) for r in records_dirs if Path(r).is_dir()]
    for entry in spec.entries:
        sweep = load_sweep(_sweep_path(entry, path), [*entry.overrides, *overrides], only=entry.only,
                           also_recorded_in=records)
        if not sweep.cells:
            continue
        try:  # the data the entry's cells read (generated data is generated here)
            resolve_dataset(sweep.cells[0].config())
        except ConfigError as err:
            skipped.append(f"{entry.sweep} {' '.join(entry.only)}".strip() + f": {first_line(err)}")
            continue
        for cell in sweep.cells:
            if cell.run_dir not in seen:
                seen.add(cell.run_dir)
                cells.append(cell)
    return Queue(spec, path, cells, skipped)
