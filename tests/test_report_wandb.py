"""The W&B report: one run per dataset with a stable id, tables that link to the training runs' groups, offline."""

import json

from report_fakes import DICE, write_fake_run
from ssl_bench.cli import main
from ssl_bench.report.wandb_report import group_url, report_run_id, training_group


def test_the_report_run_of_a_dataset_is_one_stable_offline_run(tmp_path, monkeypatch, capsys):
    """Regression: each report added a new W&B run named "summary" with a random id."""
    runs = tmp_path / "runs"
    for key, cases in DICE.items():
        write_fake_run(runs, *key, cases)
        write_fake_run(runs, *key, cases, dataset="other")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    out = tmp_path / "results"
    for _ in range(2):
        assert main(["report", str(runs), "--out", str(out), "--wandb-project", "ssl-bench-test"]) == 0
    folders = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert [f.rsplit("-", 2)[-2:] for f in folders] == [["report", "other"], ["report", "toy"]], folders
    toy = next((out / "wandb").glob("offline-run-*-report-toy"))
    tables = {p.name.split("_")[0]: p for p in (toy / "files" / "media" / "table").glob("*.table.json")}
    assert {"dice", "paired", "cost", "noise", "runs"} <= set(tables)
    paired = json.loads(tables["paired"].read_text())
    rows = [dict(zip(paired["columns"], row)) for row in paired["data"]]
    (mean_teacher,) = [r for r in rows if r["method"] == "mean_teacher"]
    assert mean_teacher["wandb_group"] == "toy/mean_teacher" and mean_teacher["case_pairs"] == 6
    assert list((toy / "files" / "media" / "images").glob("dice_vs_fraction*.png"))


def test_names_and_links():
    assert report_run_id("hippocampus") == "report-hippocampus" and report_run_id("a b/c") == "report-a-b-c"
    assert training_group("hippocampus", "co_training-lambda_max0.0") == "hippocampus/co_training"
    assert group_url("lab", "ssl-bench", "hippocampus/ua_mt") == "https://wandb.ai/lab/ssl-bench/groups/hippocampus%2Fua_mt"
    assert group_url(None, "ssl-bench", "hippocampus/ua_mt") == ""
