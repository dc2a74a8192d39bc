"""Reading runs and records: unreadable files are named and skipped, records of one cell from two machines are
kept side by side, provenance is read leniently."""

import json
import shutil
import warnings

import pytest

from report_fakes import DICE, H200, write_config, write_fake_run
from ssl_bench.cli import main
from ssl_bench.report import ReportError, ReportWarning, keep_record, read_runs, write_report
from ssl_bench.records.provenance import UNKNOWN, hardware_slug, read_provenance

MT = ("mean_teacher", 0.5, 0)


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    for key, cases in DICE.items():
        write_fake_run(runs, *key, cases)
    return runs


def _folder(runs, method="mean_teacher", fraction=0.5, draw=0, dataset="toy"):
    return runs / dataset / method / f"frac{fraction}" / f"draw{draw}"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "no_results", "no_per_case", "bad_per_case"])
def test_an_unreadable_run_is_named_and_skipped(runs, tmp_path, damage, capsys):
    """Regression: a truncated metrics.json stopped the whole report with a JSONDecodeError naming no file."""
    folder = _folder(runs)
    metrics, per_case = folder / "metrics.json", folder / "per_case.csv"
    if damage == "truncated":
        metrics.write_text(metrics.read_text()[:100])
    elif damage == "empty":
        metrics.write_text("")
    elif damage == "garbage":
        metrics.write_bytes(b"\x00\xff\xfe not json")
    elif damage == "no_results":
        metrics.write_text(json.dumps({k: v for k, v in json.loads(metrics.read_text()).items() if k != "results"}))
    elif damage == "no_per_case":
        per_case.unlink()
    else:
        per_case.write_text("case_id,something\nc1,1\n")
    bad = per_case if damage.endswith("per_case") else metrics
    with pytest.warns(ReportWarning, match=str(bad)):
        loaded = read_runs(runs)
    assert len(loaded.runs) == len(DICE) - 1 and [s.path for s in loaded.skipped] == [bad]
    if damage != "truncated":
        return
    out = tmp_path / "results"
    assert main(["report", str(runs), "--out", str(out), "--no-wandb"]) == 0
    assert f"left out {bad}" in capsys.readouterr().err
    text = (out / "summary.md").read_text()
    assert "## Left out" in text and str(bad) in text and "1 left out" in text


def test_only_unreadable_runs_is_an_error_naming_them(tmp_path):
    runs = tmp_path / "runs"
    write_fake_run(runs, *MT, DICE[MT])
    (_folder(runs) / "metrics.json").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)
        with pytest.raises(ReportError, match="skipped .*metrics.json: does not parse"):
            read_runs(runs)


def test_a_record_stands_in_for_a_run_folder_whose_metrics_do_not_parse(runs, tmp_path):
    out = tmp_path / "results"
    write_report(runs, out)
    record = out / "records" / "toy" / "mean_teacher" / "frac0.5" / "draw0" / "metrics.json"
    kept = record.read_text()
    (_folder(runs) / "metrics.json").write_text("{ truncated")
    with pytest.warns(ReportWarning):
        loaded = read_runs(runs, out / "records")
    assert len(loaded.runs) == len(DICE)
    with pytest.warns(ReportWarning):
        write_report(runs, out)
    assert record.read_text() == kept, "a corrupt run folder never overwrites its record"


def test_records_of_one_cell_from_two_machines_are_both_kept(tmp_path):
    """The H200 rerun of a CPU cell goes beside the CPU record (draw0@nvidia-h200), not over it; a run of the same
    hardware replaces its record; both count as runs of the cell."""
    cpu_runs, gpu_runs, records = tmp_path / "cpu", tmp_path / "gpu", tmp_path / "records"
    write_fake_run(cpu_runs, *MT, DICE[MT])
    write_fake_run(gpu_runs, *MT, DICE["mean_teacher", 0.5, 1], provenance=H200)
    plain = records / "toy" / "mean_teacher" / "frac0.5" / "draw0"
    assert keep_record(_folder(cpu_runs), plain) == plain
    beside = keep_record(_folder(gpu_runs), plain)
    assert beside == plain.with_name("draw0@nvidia-h200")
    assert "provenance" not in json.loads((plain / "metrics.json").read_text())
    assert json.loads((beside / "metrics.json").read_text())["provenance"] == H200
    # The same machine's run again replaces its own record.
    metrics = json.loads((_folder(gpu_runs) / "metrics.json").read_text())
    (_folder(gpu_runs) / "metrics.json").write_text(json.dumps({**metrics, "seconds_per_step": 9.0}))
    assert keep_record(_folder(gpu_runs), plain) == beside
    assert json.loads((beside / "metrics.json").read_text())["seconds_per_step"] == 9.0

    loaded = read_runs(tmp_path / "nothing", records)
    assert sorted(r.hardware for r in loaded.runs) == ["NVIDIA H200", UNKNOWN]
    assert {str(r.cell) for r in loaded.runs} == {"toy/mean_teacher/frac0.5/draw0"}
    # A run folder on disk replaces the record of its own hardware only.
    loaded = read_runs(cpu_runs, records)
    assert [(r.hardware, loaded.is_record(r)) for r in loaded.runs] == [("NVIDIA H200", True), (UNKNOWN, False)]


def test_the_report_keeps_a_record_beside_one_from_other_hardware(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    write_fake_run(runs, *MT, DICE[MT], provenance=H200)
    write_report(runs, out)
    shutil.rmtree(runs)
    write_fake_run(runs, *MT, DICE["mean_teacher", 0.5, 1])  # the same cell, no provenance: another machine
    write_report(runs, out)
    folders = sorted(p.parent.name for p in (out / "records").rglob("metrics.json"))
    assert folders == ["draw0", "draw0@unknown"]
    assert len(read_runs(tmp_path / "gone", out / "records").runs) == 2


def test_provenance_is_read_leniently():
    full = read_provenance({"provenance": {**H200, "cuda": "13.0", "cudnn": 91000, "monai": "1.6.1",
                                           "lightning": "2.6.6", "precision": "bf16-mixed", "threads": "4"}})
    assert (full.hardware, full.commit, full.dirty, full.cudnn, full.threads) == ("NVIDIA H200", "8eee470", False,
                                                                                 "91000", 4)
    assert full.describe() == ("NVIDIA H200, commit 8eee470, torch 2.11.0+cu130 (CUDA 13.0, cuDNN 91000), "
                               "MONAI 1.6.1, Lightning 2.6.6, precision bf16-mixed, 4 threads")
    nested = read_provenance({"provenance": {"git": {"commit": "abc", "dirty": True}, "device": {"name": "AMD EPYC"}}})
    assert (nested.commit, nested.dirty, nested.hardware) == ("abc", True, "AMD EPYC")
    assert "commit abc (dirty)" in nested.describe()
    old = read_provenance({}, {"trainer.precision": "32-true"})
    assert (old.recorded, old.hardware, old.precision, old.inferred) == (False, UNKNOWN, "32-true", ("precision",))
    assert old.describe().startswith("unknown")
    assert hardware_slug("NVIDIA H200") == "nvidia-h200" and hardware_slug("Intel(R) Xeon(R) @ 2.2GHz") == \
        "intel-r-xeon-r-2-2ghz"


def test_summary_csv_says_where_each_run_ran(tmp_path):
    runs = tmp_path / "runs"
    write_fake_run(runs, *MT, DICE[MT], provenance=H200)
    write_config(_folder(runs), "mean_teacher")
    text = write_report(runs, tmp_path / "results")["csv"].read_text()
    header, row = text.splitlines()[:2]
    assert "hardware" in header.split(",") and "NVIDIA H200" in row and "8eee470" in row
