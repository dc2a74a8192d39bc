"""Test scores of a stopped run's selected checkpoints, kept so that its resumable state is ``last.ckpt`` alone.

A run ends by scoring three checkpoints on the test cases: the last, the best on validation (``best-<step>.ckpt``)
and the audit's best on test (``test_best-<step>.ckpt``). A run stopped with ``run.score_on_stop`` (a GPU window's
cell, ssl_bench/evidence) scores the two selected ones before it exits and writes their per-case rows to
``checkpoints/test_scores.json``; a window's bundle then carries only last.ckpt, and the resumed run uses the kept
rows for a selected checkpoint whose file it lacks. The rows are what the end of the run would compute from the
same file on the same device: an uninterrupted run and a stopped-and-resumed one write the same per_case.csv.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from ssl_bench.utils.io import atomic_write_json

SCORES_FILE = "test_scores.json"


def read_scores(ckpt_dir: Path) -> Dict[str, dict]:
    """{checkpoint file name: {"step": its training step, "rows": its per-case test rows}}; {} when none are kept.
    A file that does not parse is an error naming it: silently rescoring would need checkpoints a bundle lacks."""
    path = Path(ckpt_dir) / SCORES_FILE
    if not path.is_file():
        return {}
    try:
        scores = json.loads(path.read_text())
        if not all(isinstance(s, dict) and isinstance(s.get("step"), int) and isinstance(s.get("rows"), list)
                   for s in scores.values()):
            raise ValueError("an entry lacks its step or rows")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not a file of kept test scores ({err})") from None
    return scores


def keep_scores(ckpt_dir: Path, name: str, step: int, rows: List[dict]) -> None:
    scores = read_scores(ckpt_dir)
    scores[name] = {"step": int(step), "rows": rows}
    atomic_write_json(Path(ckpt_dir) / SCORES_FILE, scores)
