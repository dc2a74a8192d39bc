"""Run identity: whether a folder holds a run of a given config, and whether that run is finished.

A run is identified by everything that changes what it computes: its resolved config (``config.yaml``) less the keys
that change only how it executes or logs (``EXECUTION_KEYS``) or where its files are (``LOCATION_KEYS``). A path
under the runs folder (the contrastive pretraining's backbone in ``model.init_from``) is compared relative to that
folder, so a run folder copied or moved with its runs folder, or the runs folder spelled another way (``../runs``
or an absolute path), is the same run. A key added to the schema after a run was made is no difference while it
keeps its default (config.schema_defaults). Where and with what a run was computed (metrics.json's provenance) is no
part of its identity: a run resumes on another machine.

A folder (a run folder, or a record of one) holds a finished run of a config when its ``metrics.json`` parses and
holds a result and its ``config.yaml`` is that config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from ssl_bench.config import EXECUTION_KEYS, ConfigError, load_yaml, schema_defaults
from ssl_bench.utils.dicts import differing_keys, flatten_keys

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
# Keys that say where a run's files are, not what it computes.
LOCATION_KEYS = ("run.runs_dir", "data.root", "data.cache_dir")
NOT_IDENTITY = EXECUTION_KEYS + LOCATION_KEYS
# What a metrics.json holds when its run finished (train.py writes it last).
RESULT_KEYS = ("dataset", "method", "fraction", "draw", "primary", "results", "steps")
# Stands for the runs folder in a path compared relative to it.
RUNS_DIR = "<run.runs_dir>"


class UnreadableResult(ValueError):
    """A metrics.json (or another result file) that does not parse or holds no result; the message names it."""


def read_metrics(path: Path, required=RESULT_KEYS) -> dict:
    """The content of a run's metrics.json (or another JSON result holding the keys ``required``); UnreadableResult
    naming the file and what is wrong with it when it does not parse (e.g. truncated by a full disk) or lacks them."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UnreadableResult(f"{path}: cannot be read ({err})") from None
    if not text.strip():
        raise UnreadableResult(f"{path}: empty")
    try:
        metrics = json.loads(text)
    except ValueError as err:
        raise UnreadableResult(f"{path}: not valid JSON ({err})") from None
    missing = [key for key in required if not isinstance(metrics, dict) or key not in metrics]
    if missing:
        raise UnreadableResult(f"{path}: holds no complete result (no {', '.join(missing)})")
    return metrics


def comparable(config: dict) -> dict:
    """A config (nested, as in config.yaml) as flat dotted keys, with a path under its runs folder made relative to
    it. The keys that are no part of a run's identity are still there: compare with config_differences."""
    flat = flatten_keys(config)
    path, runs_dir = flat.get("model.init_from"), flat.get("run.runs_dir")
    if path and runs_dir:
        flat["model.init_from"] = _relative_to_runs_dir(str(path), str(runs_dir))
    return flat


def _relative_to_runs_dir(path: str, runs_dir: str) -> str:
    # As written (both relative to the same working folder, or both absolute), else both resolved.
    for p, root in ((Path(os.path.normpath(path)), Path(os.path.normpath(runs_dir))),
                    (Path(path).resolve(), Path(runs_dir).resolve())):
        if p.is_relative_to(root):
            return str(Path(RUNS_DIR) / p.relative_to(root))
    return path


def config_differences(saved: Path, cfg: DictConfig) -> List[str]:
    """The keys of the run's identity in which the saved ``config.yaml`` differs from ``cfg``: the one test of "the
    same run", for resuming a run folder, for reusing a finished one and for counting a record as a sweep's cell.
    A config.yaml that does not parse is a ConfigError naming it."""
    theirs = comparable(OmegaConf.to_container(load_yaml(saved)))
    ours = comparable(OmegaConf.to_container(cfg, resolve=True))
    return differing_keys(theirs, ours, ignore=NOT_IDENTITY, defaults=schema_defaults())


def different_run_message(folder: Path, differing: List[str]) -> str:
    shown = ", ".join(differing[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
    return (f"{folder} holds a run with a different config ({shown} differ): use run.tag=<name> for a variant, "
            "or --force to start this run over")


def check_same_run(folder: Path, cfg: DictConfig) -> None:
    """ConfigError when ``folder`` holds a run (its config.yaml) of another config than ``cfg``, naming the differing
    keys, or a result without the config that tells which run it is."""
    saved = Path(folder) / CONFIG_FILE
    if not saved.is_file():
        if (Path(folder) / METRICS_FILE).is_file():
            raise ConfigError(f"{folder} has a {METRICS_FILE} but no {CONFIG_FILE}: which config it ran cannot be "
                              "told; use run.tag=<name> for this run, or --force to start it over")
        return
    differing = config_differences(saved, cfg)
    if differing:
        raise ConfigError(different_run_message(Path(folder), differing))


def finished_result(folder: Path, cfg: DictConfig) -> Optional[dict]:
    """The metrics.json of the finished run of ``cfg`` in ``folder``; None when it holds none (no metrics.json yet).
    ConfigError when it holds a run of another config; UnreadableResult when its metrics.json does not parse or holds
    no result (the run is not finished: evaluating it again, from its last checkpoint, rewrites it)."""
    check_same_run(folder, cfg)
    path = Path(folder) / METRICS_FILE
    return read_metrics(path) if path.is_file() else None
