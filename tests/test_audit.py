"""The test-selection audit (ssl_bench/run/test_selection_audit.py): the checkpoint best on the test cases, evaluated
beside the last and the best-on-validation ones, without changing what the run computes, and through a resume (under
DDP: tests/test_ddp_training.py)."""

import csv
import json
from pathlib import Path

import pytest
import torch

from ssl_bench.cli import main
from conftest import TINY
from test_train_e2e import _killed_after_first_checkpoint

COMMON = ("data.fraction=0.5", "trainer.max_steps=6", "trainer.val_every_n_steps=2")


def _args(root, cache, *extra, method="mean_teacher"):
    return ["train", "--method", method, "--data", "synthetic", f"run.runs_dir={root / 'runs'}",
            f"data.cache_dir={cache}", *TINY, *COMMON, *extra]


def _run(root, method="mean_teacher") -> Path:
    return root / "runs" / "synthetic" / method / "frac0.5" / "draw0"


def _rows(run: Path) -> list:
    with open(run / "per_case.csv") as f:
        return list(csv.DictReader(f))


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_the_audit_adds_test_best_and_changes_nothing_else(tmp_path, synthetic_cache):
    """A Mean Teacher run (dropout, input noise, two streams) with the audit and without: the same final weights bit
    for bit, the same best-on-validation checkpoint and the same last / best rows; the audit adds the test_best
    rows, whose Dice is the best the audit scored, and no lower than the last checkpoint's."""
    on, off = tmp_path / "on", tmp_path / "off"
    assert main(_args(on, synthetic_cache)) == 0
    assert main(_args(off, synthetic_cache, "eval.test_selection_audit=false")) == 0
    run_on, run_off = _run(on), _run(off)
    expected, got = _weights(run_off), _weights(run_on)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []

    m_on, m_off = (json.loads((r / "metrics.json").read_text()) for r in (run_on, run_off))
    assert set(m_off["results"]) == {"last", "best"} and "test_selection" not in m_off
    assert set(m_on["results"]) == {"last", "best", "test_best"}
    assert m_on["best_checkpoint"] == m_off["best_checkpoint"]
    rows_on, rows_off = _rows(run_on), _rows(run_off)
    assert [r for r in rows_on if r["checkpoint"] != "test_best"] == rows_off
    n_test = m_on["n_test"]
    assert len([r for r in rows_on if r["checkpoint"] == "test_best"]) == 2 * n_test  # student and teacher

    audit = m_on["test_selection"]
    assert audit["validations_scored"] == 3 and audit["first_scored_step"] == 2
    assert audit["best_checkpoint"] == f"test_best-{audit['best_step']}.ckpt"
    assert audit["seconds"] > 0 and audit["seconds_per_validation"] == pytest.approx(audit["seconds"] / 3)
    assert audit["cost_vs_validation"] == pytest.approx(audit["seconds"] / audit["validation_seconds"])
    teacher = m_on["results"]["test_best"]["teacher"]["dice_mean"]  # the primary model, as selected
    assert teacher == pytest.approx(audit["test_dice_at_selection"], abs=1e-12)
    assert teacher >= m_on["results"]["last"]["teacher"]["dice_mean"] - 1e-12
    scored = [float(r["audit/test_dice_mean"]) for r in
              csv.DictReader(open(run_on / "csv" / "metrics.csv")) if r["audit/test_dice_mean"]]
    assert len(scored) == 3 and max(scored) == pytest.approx(teacher, abs=1e-6)
    assert sorted(p.name for p in (run_on / "checkpoints").glob("test_best-*")) == [audit["best_checkpoint"]]


def test_a_resumed_run_continues_the_selection(tmp_path, synthetic_cache, monkeypatch):
    """Killed after its step-2 checkpoint, with a stray test_best file beside it (as a kill between writing a new
    test_best and the resume checkpoint that names it leaves), the resumed run selects what the run never stopped
    selects, counts every validation, and keeps only the file its state names."""
    uninterrupted, resumed = tmp_path / "a", tmp_path / "b"
    assert main(_args(uninterrupted, synthetic_cache)) == 0
    _killed_after_first_checkpoint(resumed, _args(resumed, synthetic_cache), monkeypatch)
    checkpoints = _run(resumed) / "checkpoints"
    state = torch.load(checkpoints / "last.ckpt", weights_only=True)["callbacks"]["TestSelectionAudit"]
    assert state["validations"] == 1 and state["best_path"] == str(checkpoints / "test_best-2.ckpt")
    stray = checkpoints / "test_best-4.ckpt"
    stray.write_bytes((checkpoints / "test_best-2.ckpt").read_bytes())

    assert main(_args(resumed, synthetic_cache)) == 0
    expected, got = (json.loads((_run(r) / "metrics.json").read_text()) for r in (uninterrupted, resumed))
    assert got["resumed_from_step"] == 2
    for key in ("best_step", "best_checkpoint", "test_dice_at_selection", "validations_scored", "first_scored_step"):
        assert got["test_selection"][key] == expected["test_selection"][key], key
    assert got["results"]["test_best"] == expected["results"]["test_best"]
    kept = sorted(p.name for p in checkpoints.glob("test_best-*"))
    assert kept == [expected["test_selection"]["best_checkpoint"]]
