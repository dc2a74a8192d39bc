"""What the sweep tests share: sweep files, stand-ins for cells and the runs they leave."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ssl_bench.config import to_yaml
from ssl_bench.sweep import Cell
from conftest import PROJECT_ROOT

SWEEPS = PROJECT_ROOT / "experiments" / "sweeps"
SUBPROCESS_TIMEOUT_S = 300


def execution_overrides(runs: Path, cache) -> list:
    """Where a test sweep writes and finds its data; W&B off to keep tests fast."""
    return [f"run.runs_dir={runs}", f"data.cache_dir={cache}", "logging.wandb=false"]


def write_sweep(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump({"data": "synthetic", "methods": ["supervised"], "fractions": [0.5], **spec}))
    return path


def metrics_files(runs: Path) -> list:
    return sorted(runs.rglob("metrics.json"))


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """Cells and jobs run in subprocesses, some at once. Tiny nets gain nothing from a second thread, and on a
    busy two-core machine OpenMP's waiting threads made these tests three to five times slower. Autouse in every
    module that imports it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def processes_mentioning(text: str) -> list:
    """Live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # the process ended while we looked
            pass
    return found


def result(cell: Cell, **content) -> dict:
    """A metrics.json of ``cell`` holding what a finished run's does (its values made up)."""
    return {"dataset": "synthetic", "method": cell.method, "fraction": cell.fraction, "draw": cell.draw,
            "primary": {"dice_mean": 0.5}, "results": {}, "steps": 1, **content}


def record(records: Path, cell: Cell, **changes) -> Path:
    """A record of ``cell`` as `ssl-bench report` keeps it, made with its config plus ``changes``."""
    folder = records / cell.relative_dir
    folder.mkdir(parents=True)
    cfg = cell.config()
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / "metrics.json").write_text(json.dumps(result(cell)))
    return folder


def writes_metrics(ran: list):
    """A stand-in for Cell.command that notes the method and writes the cell's config.yaml and metrics.json (with
    the method in "ran") at once."""
    def command(cell: Cell) -> list:
        ran.append(cell.method)
        return [sys.executable, "-c", "import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
                "p.mkdir(parents=True, exist_ok=True); (p / 'config.yaml').write_text(sys.argv[2]); "
                "(p / 'metrics.json').write_text(sys.argv[3])",
                str(cell.run_dir), to_yaml(cell.run_config()), json.dumps(result(cell, ran=cell.method))]
    return command
