"""Records: the small result files of a finished run (metrics.json, per_case.csv, config.yaml) kept beyond its run
folder, in the run's own layout (``<dataset>/<method>[-<tag>]/<labeled setting>/draw<d>[@<hardware>]/``).

The layer below both the report (ssl_bench.report, which reads them) and the sweeps (ssl_bench.sweep, which keep a
cell's record as soon as it finishes and count a recorded cell as finished): neither imports the other to reach
them. ``provenance`` reads where a record was computed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ssl_bench.records.provenance import hardware_slug, read_provenance
from ssl_bench.utils.io import atomic_write_bytes

METRICS_FILE = "metrics.json"
PER_CASE_FILE = "per_case.csv"
CONFIG_FILE = "config.yaml"
RECORDS_DIR = "records"
# Written in this order: metrics.json, which marks a run (and a record) finished, last.
RECORD_FILES = (PER_CASE_FILE, CONFIG_FILE, METRICS_FILE)
# A record of another machine's run of the same cell: draw<d>@<hardware slug>.
REPLICATE_SEPARATOR = "@"


def keep_record(run_folder: Path, record_folder: Path) -> Path:
    """Copies a finished run's result files to ``record_folder``, replacing the record there if it is of the same
    hardware (or unreadable); a record there from other hardware stays, and the run goes to
    ``<record_folder>@<hardware>`` beside it. Returns the folder written.

    The old metrics.json (which makes a folder a record) goes first and the new one comes last, each file is
    written atomically and a stale file the run lacks is removed: a kill midway leaves no record mixing two runs.
    """
    run_folder, record_folder = Path(run_folder), Path(record_folder)
    hardware = hardware_of(run_folder)
    existing = hardware_of(record_folder)
    if existing is not None and existing != hardware:
        record_folder = record_folder.with_name(f"{record_folder.name}{REPLICATE_SEPARATOR}"
                                                f"{hardware_slug(hardware or 'unknown')}")
    (record_folder / METRICS_FILE).unlink(missing_ok=True)
    for name in RECORD_FILES:
        source, target = run_folder / name, record_folder / name
        if source.is_file():
            atomic_write_bytes(target, source.read_bytes())
        elif target.is_file():
            target.unlink()
    return record_folder


def hardware_of(folder: Path) -> Optional[str]:
    """The hardware label of a folder's run (its metrics.json), or None when it has no readable one."""
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return read_provenance(metrics if isinstance(metrics, dict) else {}).hardware
