"""Sweeps: grid expansion and validation, the smoke sweep end to end, resume after a SIGKILL or a SIGTERM of the
sweep, DDP evaluation equal to one process, and the SLURM path through submitit's local executor."""

import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from ssl_bench.callbacks import STOPPED_EXIT_CODE
from ssl_bench.cli import main
from ssl_bench.config import ConfigError, run_dir, to_yaml
from ssl_bench.registry import method_names
from ssl_bench.sweep import Cell, Progress, SweepError, job_environments, load_sweep, run_sweep
from conftest import PROJECT_ROOT
from test_train_e2e import TINY

SWEEPS = PROJECT_ROOT / "experiments" / "sweeps"
DDP_SCRIPT = Path(__file__).with_name("ddp_eval_script.py")
SUBPROCESS_TIMEOUT_S = 300


def _execution_overrides(runs: Path, cache) -> list:
    """Where a test sweep writes and finds its data; W&B off to keep tests fast."""
    return [f"run.runs_dir={runs}", f"data.cache_dir={cache}", "logging.wandb=false"]


def _write_sweep(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump({"data": "synthetic", "methods": ["supervised"], "fractions": [0.5], **spec}))
    return path


def _metrics_files(runs: Path) -> list:
    return sorted(runs.rglob("metrics.json"))


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """Cells and jobs run in subprocesses, some at once. Tiny nets gain nothing from a second thread, and on a
    busy two-core machine OpenMP's waiting threads made these tests three to five times slower."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, synthetic_cache):
    """experiments/sweeps/smoke.yaml run once through the CLI, as `make sweep SWEEP=smoke RUNS=...` does."""
    runs = tmp_path_factory.mktemp("smoke") / "runs"
    assert main(["sweep", str(SWEEPS / "smoke.yaml"), *_execution_overrides(runs, synthetic_cache)]) == 0
    return runs


@functools.lru_cache(maxsize=None)
def _shipped_sweep(path: Path):
    """A shipped sweep file, loaded once for the tests that only read it (a large sweep loads in seconds)."""
    return load_sweep(path)


def test_hippocampus_sweep_is_every_semi_supervised_method_by_fraction_by_draw_plus_full_supervision():
    sweep = _shipped_sweep(SWEEPS / "hippocampus.yaml")
    # Every method but those for partial annotations (their own sweeps): a new method must join or be excluded here.
    methods = [m for m in method_names() if m not in ("smile", "smiler")]
    expected = {(m, f, d) for m in methods for f in (0.05, 0.1, 0.2) for d in (0, 1, 2)}
    expected |= {("supervised", 1.0, d) for d in (0, 1, 2)}
    cells = [(c.method, c.fraction, c.draw) for c in sweep.cells]
    assert len(cells) == len(expected) and set(cells) == expected
    assert len({c.run_dir for c in sweep.cells}) == len(cells)
    assert [c.draw for c in sweep.cells] == sorted(c.draw for c in sweep.cells)  # draw by draw
    cfg = sweep.cells[0].config()
    assert (cfg.data.name, cfg.data.fraction, cfg.data.draw) == ("hippocampus", 0.05, 0)
    assert sweep.config.name == "hippocampus" and sweep.config.launcher == "local"


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_loads_and_each_cell_config_resolves(path):
    sweep = _shipped_sweep(path)
    assert sweep.cells and sweep.config.name == path.stem  # `make sweep SWEEP=<name>` finds it by that name
    for cell in sweep.cells:
        cfg = cell.config()  # typed schema: an unknown or mistyped key fails here
        assert (cfg.method.name, cfg.data.fraction, cfg.data.draw) == (cell.method, cell.fraction, cell.draw)
        assert (cfg.data.n_labeled, cfg.data.labeled_selection) == (cell.n_labeled, cell.labeled_selection)


def test_the_acdc_sweep_is_methods_by_labeled_patients_by_selection_by_draw_with_ssl4mis_protocol():
    sweep = _shipped_sweep(SWEEPS / "acdc.yaml")
    methods = ["supervised", "mean_teacher", "ua_mt", "cps", "unimatch", "bcp"]
    expected = {(m, n, s, d) for m in methods for n in (3, 7) for s in ("draw", "first") for d in (0, 1, 2)}
    cells = [(c.method, c.n_labeled, c.labeled_selection, c.draw) for c in sweep.cells if c.n_labeled]
    assert len(cells) == len(expected) and set(cells) == expected
    assert {(c.method, c.fraction) for c in sweep.cells if not c.n_labeled} == {("supervised", 1.0)}  # all 70
    assert len({c.run_dir for c in sweep.cells}) == len(sweep.cells) == 75
    cfg = next(c for c in sweep.cells if c.labeled_selection == "first").config()
    assert cfg.protocol == "ssl4mis" and cfg.trainer.max_steps == 30000 and cfg.data.fraction is None
    assert str(run_dir(cfg)) == "runs/acdc-ssl4mis/supervised/labeled3-first/draw0"
    assert "n_labeled=3 labeled_selection=first draw=0" in sweep.cells[12].describe()


def test_extra_axis_cells_get_their_own_run_folders(tmp_path):
    path = _write_sweep(tmp_path / "lr.yaml", draws=[0, 1], axes={"optim.lr": [0.001, 0.002]},
                        extra_cells=[{"method": "supervised", "fraction": 1.0},
                                     {"method": "supervised", "fraction": 0.5}],  # already in the grid: once
                        overrides=["run.tag=v"])
    sweep = load_sweep(path, ["run.runs_dir=elsewhere"])
    assert len(sweep.cells) == 2 * 2 * 2  # draws x lr x (grid cell + the 100% cell)
    for cell in sweep.cells:
        cfg = cell.config()
        lr = dict(cell.axis_values)["optim.lr"]
        assert cfg.optim.lr == lr and cfg.run.tag == f"v-lr{lr}"
        assert list(cfg.logging.tags) == ["sweep=lr"]  # the sweep id, as a W&B tag of every cell
        assert cell.run_dir == Path("elsewhere", "synthetic", f"supervised-v-lr{lr}", f"frac{cell.fraction}",
                                    f"draw{cell.draw}")
    assert "optim.lr=0.001" in sweep.cells[0].describe()


@pytest.mark.parametrize("spec, key, message", [
    ({"fractoins": [0.1]}, "fractoins", "not in 'SweepConfig'"),
    ({"methods": ["supervised", "no_such_method"]}, "methods", "unknown method 'no_such_method'"),
    ({"fractions": [0.0]}, "fractions", "must be in (0, 1]"),
    ({"extra_cells": [{"method": "supervised", "fraction": 1.5}]}, "extra_cells[0].fraction", "must be in (0, 1]"),
    ({"launcher": "kubernetes"}, "launcher", "must be one of local, slurm"),
    ({"local": {"jobs": 0}}, "local.jobs", "must be >= 1"),
    ({"axes": {"optim.lrr": [1.0]}}, "optim.lrr", "not in 'OptimConfig'"),
    ({"overrides": ["data.fraction=0.2"]}, "overrides", "sets a key the grid sets"),
    ({"overrides": ["data.n_labeled=3"]}, "overrides", "sets a key the grid sets"),
    ({"fractions": [], "n_labeled": [0]}, "n_labeled", "must be >= 1"),
    ({"labeled_selections": ["random"]}, "labeled_selections", "must list draw and/or first"),
    ({"fractions": [], "n_labeled": [2], "methods": ["nope"]}, "methods", "unknown method 'nope'"),
])
def test_invalid_sweep_files_name_the_file_and_key(tmp_path, spec, key, message):
    path = _write_sweep(tmp_path / "bad.yaml", **spec)
    with pytest.raises(ConfigError) as err:  # SweepError is one; schema errors come from the config merge
        load_sweep(path)
    assert str(path) in str(err.value) and key in str(err.value) and message in str(err.value)


def test_smoke_sweep_end_to_end_then_skips_finished_cells(smoke_runs, synthetic_cache, tmp_path, capsys):
    methods = [cell.method for cell in load_sweep(SWEEPS / "smoke.yaml").cells]
    assert methods[:2] == ["supervised", "mean_teacher"]
    metrics = [json.loads(p.read_text()) for p in _metrics_files(smoke_runs)]
    assert sorted(m["method"] for m in metrics) == sorted(methods)
    assert all(m["fraction"] == 0.5 and m["draw"] == 0 and m["steps"] == 6 for m in metrics)

    stamps = [p.stat().st_mtime_ns for p in _metrics_files(smoke_runs)]
    assert main(["sweep", str(SWEEPS / "smoke.yaml"), *_execution_overrides(smoke_runs, synthetic_cache)]) == 0
    out = capsys.readouterr().out
    for k, method in enumerate(methods, start=1):
        assert f"[sweep] cell {k}/{len(methods)}: method={method} fraction=0.5 draw=0 (already finished)" in out
    assert [p.stat().st_mtime_ns for p in _metrics_files(smoke_runs)] == stamps

    assert main(["report", str(smoke_runs), "--out", str(tmp_path / "results"), "--no-wandb"]) == 0
    with open(tmp_path / "results" / "summary.csv") as f:
        assert sorted(r["method"] for r in csv.DictReader(f)) == sorted(methods)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_sweep_passes_the_sweep_file_and_runs_folder():
    dry = subprocess.run(["make", "-n", "sweep", "SWEEP=smoke", "RUNS=/tmp/somewhere"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert "ssl-bench sweep experiments/sweeps/smoke.yaml run.runs_dir=/tmp/somewhere" in dry.stdout


def _processes_mentioning(text: str) -> list:
    """Live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # the process ended while we looked
            pass
    return found


def test_job_slots_split_threads_and_gpus():
    env = {"PATH": "/bin"}
    assert job_environments(1, env, cpu_count=16, gpu_count=4) == [env]  # one job: the environment unchanged
    two = job_environments(2, env, cpu_count=16, gpu_count=4)
    assert [(e["OMP_NUM_THREADS"], e["CUDA_VISIBLE_DEVICES"]) for e in two] == [("8", "0,1"), ("8", "2,3")]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in job_environments(3, env, cpu_count=2, gpu_count=1)] == ["0"] * 3
    assert [e["OMP_NUM_THREADS"] for e in job_environments(3, env, cpu_count=2, gpu_count=1)] == ["1"] * 3
    visible = job_environments(2, {"CUDA_VISIBLE_DEVICES": "3,5", "OMP_NUM_THREADS": "2"}, cpu_count=8, gpu_count=2)
    assert [(e["OMP_NUM_THREADS"], e["CUDA_VISIBLE_DEVICES"]) for e in visible] == [("2", "3"), ("2", "5")]
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in job_environments(2, env, cpu_count=4, gpu_count=0))


# A stand-in for a cell's training (no timing involved): the first two cells each wait until both have started,
# which only cells running at once can do, then write their result; the third fails at once.
RENDEZVOUS_CELL = """
import pathlib, sys, time
run_dir, others = pathlib.Path(sys.argv[1]), [pathlib.Path(p) for p in sys.argv[2:]]
if not others:
    sys.exit(1)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "started").write_text("")
deadline = time.time() + 60
while not all((o / "started").is_file() for o in others):
    if time.time() > deadline:
        sys.exit(2)
    time.sleep(0.05)
(run_dir / "metrics.json").write_text("{}")
"""


def test_local_jobs_run_cells_at_once_and_a_failed_cell_leaves_the_others(tmp_path, monkeypatch, capsys):
    path = _write_sweep(tmp_path / "jobs.yaml", methods=["supervised", "mean_teacher", "pi_model"],
                        local={"jobs": 2})
    sweep = load_sweep(path, [f"run.runs_dir={tmp_path / 'runs'}"])
    waiting = [c.run_dir for c in sweep.cells[:2]]
    monkeypatch.setattr(Cell, "command", lambda cell: [
        sys.executable, "-c", RENDEZVOUS_CELL, str(cell.run_dir),
        *([str(d) for d in waiting if d != cell.run_dir] if cell.run_dir in waiting else [])])
    assert run_sweep(sweep) == 1
    assert [(c.run_dir / "metrics.json").is_file() for c in sweep.cells] == [True, True, False]
    out, err = capsys.readouterr()
    assert "[job 1/2]" in out and "[job 2/2]" in out
    assert "failed: method=pi_model" in err and "method=supervised" not in err


def _result(cell: Cell, **content) -> dict:
    """A metrics.json of ``cell`` holding what a finished run's does (its values made up)."""
    return {"dataset": "synthetic", "method": cell.method, "fraction": cell.fraction, "draw": cell.draw,
            "primary": {"dice_mean": 0.5}, "results": {}, "steps": 1, **content}


def _record(records: Path, cell: Cell, **changes) -> Path:
    """A record of ``cell`` as `ssl-bench report` keeps it, made with its config plus ``changes``."""
    folder = records / cell.relative_dir
    folder.mkdir(parents=True)
    cfg = cell.config()
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / "metrics.json").write_text(json.dumps(_result(cell)))
    return folder


def _writes_metrics(ran: list):
    """A stand-in for Cell.command that notes the method and writes the cell's config.yaml and metrics.json (with
    the method in "ran") at once."""
    def command(cell: Cell) -> list:
        ran.append(cell.method)
        return [sys.executable, "-c", "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True, exist_ok=True); "
                "(p / 'config.yaml').write_text(sys.argv[2]); (p / 'metrics.json').write_text(sys.argv[3])",
                str(cell.run_dir), to_yaml(cell.run_config()), json.dumps(_result(cell, ran=cell.method))]
    return command


def test_eta_counts_a_resumed_cell_as_the_share_of_steps_it_trained(tmp_path, monkeypatch):
    """A sweep restarted 900 steps into a 1000-step cell finishes it in a tenth of a cell's time: the ETA must
    count each cell left at ten times that, not at that tenth; a failed cell is no work done."""
    cells = [Cell("supervised", "synthetic", 0.1, draw, (), (), tmp_path / f"draw{draw}") for draw in range(4)]
    for cell, resumed_from in [(cells[0], 900), (cells[1], None)]:
        cell.run_dir.mkdir()
        (cell.run_dir / "metrics.json").write_text(json.dumps({"steps": 1000, "resumed_from_step": resumed_from}))
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    progress = Progress(n_cells=4, n_pending=4)
    assert progress.line(1, cells[0]).endswith("(ETA after the first cell)")
    now[0] = 60.0  # the resumed cell's last 100 steps: 60 s, so a whole cell takes 600 s
    progress.finish_one(cells[0])
    assert progress.line(2, cells[1]).endswith("(ETA 0:30:00)")  # 3 cells left × 600 s
    now[0] = 660.0
    progress.finish_one(cells[1])
    now[0] = 700.0  # cell 3 fails (no metrics.json) after 40 s
    progress.finish_one(cells[2])
    assert progress.line(4, cells[3]).endswith(f"(ETA {timedelta(seconds=round(700 / 1.1))})")


def test_cells_recorded_with_the_same_config_count_as_finished_and_others_run(tmp_path, monkeypatch, capsys):
    path = _write_sweep(tmp_path / "records.yaml", methods=["supervised", "mean_teacher", "pi_model"])
    runs, records = [f"run.runs_dir={tmp_path / 'runs'}"], tmp_path / "records"
    cells = load_sweep(path, runs).cells
    # Where a run was written and how it logged are no part of what it computed; a changed default is.
    same = _record(records, cells[0], **{"run.runs_dir": "/elsewhere", "logging.tags": ["sweep=old"]})
    other = _record(records, cells[1], **{"model.dropout": 0.0})

    assert main(["sweep", str(path), "--dry-run", "--records", str(records), *runs]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines()] == ["recorded", "pending", "pending"]
    assert f"record {other} has another config (model.dropout differ): its cell will run" in err

    sweep = load_sweep(path, runs, records)
    assert [c.record for c in sweep.cells] == [same, None, None]
    ran = []
    monkeypatch.setattr(Cell, "command", _writes_metrics(ran))
    assert run_sweep(sweep) == 0
    assert ran == ["mean_teacher", "pi_model"]
    out = capsys.readouterr().out
    assert "3 cells, 1 already finished (1 of them recorded only)" in out
    assert f"cell 1/3: method=supervised fraction=0.5 draw=0 (recorded in {same})" in out
    assert not (cells[0].run_dir / "metrics.json").exists()  # nothing was run or written for it
    # Each cell that ran is kept in the records as it finishes, replacing the record of another config (its
    # config.yaml too, which this stand-in run lacks); the record that stood in for its cell is untouched.
    assert [json.loads((records / c.relative_dir / "metrics.json").read_text()).get("ran") for c in cells] == [
        None, "mean_teacher", "pi_model"]
    assert (other / "config.yaml").read_text() == to_yaml(cells[1].run_config())

    ran.clear()  # without records, the recorded cell is pending again
    assert run_sweep(load_sweep(path, runs)) == 0 and ran == ["supervised"]
    with pytest.raises(SweepError, match="no records folder"):
        load_sweep(path, runs, tmp_path / "missing")


def test_a_cell_counts_as_finished_only_with_a_readable_result_of_its_own_config(tmp_path, monkeypatch, capsys):
    """A run folder whose metrics.json is cut short is no finished cell (its cell runs again, the file named); one
    holding a finished run of another config is refused with the differing keys, and --force starts it over; a
    runs folder named another way is the same runs folder."""
    path = _write_sweep(tmp_path / "identity.yaml", methods=["supervised", "mean_teacher", "pi_model"])
    runs = [f"run.runs_dir={tmp_path / 'runs'}"]
    ran = []
    monkeypatch.setattr(Cell, "command", _writes_metrics(ran))
    assert run_sweep(load_sweep(path, runs)) == 0 and len(ran) == 3
    truncated, changed, intact = (c.run_dir for c in load_sweep(path, runs).cells)
    (truncated / "metrics.json").write_text((truncated / "metrics.json").read_text()[:40])
    cfg = yaml.safe_load((changed / "config.yaml").read_text())
    cfg["optim"]["lr"] = 0.5
    (changed / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()

    sweep = load_sweep(path, runs)
    assert [c.state() for c in sweep.cells] == ["pending", "refused", "finished"]
    assert f"[sweep] {truncated / 'metrics.json'}: not valid JSON" in capsys.readouterr().err
    ran.clear()
    assert run_sweep(sweep) == 1 and ran == ["supervised"]
    out, err = capsys.readouterr()
    assert "3 cells, 1 already finished, 1 refused" in out and "failed:" not in err
    assert (f"refused: method=mean_teacher fraction=0.5 draw=0: {changed} holds a run with a different config "
            "(optim.lr differ): use run.tag=<name> for a variant, or --force") in err

    # The same runs folder, relative from elsewhere: nothing to do but the refused cell.
    monkeypatch.chdir(tmp_path / "runs")
    assert [c.state() for c in load_sweep(path, ["run.runs_dir=../runs"]).cells] == ["finished", "refused", "finished"]
    ran.clear()
    assert run_sweep(load_sweep(path, ["run.runs_dir=../runs"], force=True)) == 0
    assert ran == ["supervised", "mean_teacher", "pi_model"]
    assert yaml.safe_load((changed / "config.yaml").read_text())["optim"]["lr"] != 0.5


def test_a_record_of_a_pretrained_method_counts_as_its_cell(tmp_path, capsys):
    """contrastive's saved config holds the init_from its pretraining stage filled in, which the cell's config
    lacks; the record still counts, wherever its runs_dir was, unless it started from another backbone."""
    from ssl_bench.pretrain import backbone_path
    path = _write_sweep(tmp_path / "records.yaml", methods=["contrastive"], draws=[0, 1])
    runs, records = [f"run.runs_dir={tmp_path / 'runs'}"], tmp_path / "records"
    cells = load_sweep(path, runs).cells
    elsewhere = cells[0].config()
    elsewhere.run.runs_dir = "/elsewhere/runs"
    same = _record(records, cells[0], **{"run.runs_dir": "/elsewhere/runs",
                                          "model.init_from": str(backbone_path(elsewhere))})
    other = _record(records, cells[1], **{"model.init_from": "/my/backbone.pt"})
    assert [c.record for c in load_sweep(path, runs, records).cells] == [same, None]
    assert f"record {other} has another config (model.init_from differ)" in capsys.readouterr().err
    (other / "config.yaml").write_text("model: [\n")  # not YAML: unusable, not a crash
    assert [c.record for c in load_sweep(path, runs, records).cells] == [same, None]
    assert f"record {other} is unusable ({other / 'config.yaml'}: cannot parse YAML" in capsys.readouterr().err
    (other / "metrics.json").write_text('{"dataset": "synth')  # cut short: no record, whatever its config
    (other / "config.yaml").write_text((same / "config.yaml").read_text())
    assert [c.record for c in load_sweep(path, runs, records).cells] == [same, None]
    assert f"record {other} is unusable ({other / 'metrics.json'}: not valid JSON" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sweep's children die with it on Linux only")
def test_killed_sweep_resumes_with_exactly_one_result_per_cell(tmp_path, synthetic_cache, capfd):
    """A real SIGKILL of the sweep while its second cell trains, then the same command again."""
    runs = tmp_path / "runs"
    # An extra axis makes the first cell short and the second long enough to be killed mid-training.
    path = _write_sweep(tmp_path / "kill.yaml", axes={"trainer.max_steps": [8, 100]},
                        overrides=[*TINY, "trainer.val_every_n_steps=20"])
    args = ["sweep", str(path), *_execution_overrides(runs, synthetic_cache)]
    second = runs / "synthetic" / "supervised-max_steps100" / "frac0.5" / "draw0"
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + SUBPROCESS_TIMEOUT_S
        while not (second / "checkpoints" / "last.ckpt").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (second / "checkpoints" / "last.ckpt").is_file(), "the second cell wrote no checkpoint in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while _processes_mentioning(str(runs)) and time.time() < deadline:  # the cell dies with the sweep
        time.sleep(0.1)
    assert not _processes_mentioning(str(runs)), "a cell outlived the killed sweep"
    assert len(_metrics_files(runs)) == 1 and not (second / "metrics.json").exists()
    for path_written in [*runs.rglob("*.json"), *runs.rglob("*.yaml")]:  # written atomically: never half a file
        yaml.safe_load(path_written.read_text())

    assert main(args) == 0
    out = capfd.readouterr().out
    assert "cell 1/2: method=supervised fraction=0.5 draw=0 trainer.max_steps=8 (already finished)" in out
    assert "cell 2/2: method=supervised fraction=0.5 draw=0 trainer.max_steps=100 (ETA" in out
    assert "resuming from" in out
    metrics = [json.loads(p.read_text()) for p in _metrics_files(runs)]
    assert sorted(m["steps"] for m in metrics) == [8, 100]
    resumed = next(m for m in metrics if m["steps"] == 100)
    assert 0 < resumed["resumed_from_step"] < 100


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sweep's children die with it on Linux only")
@pytest.mark.parametrize("how, max_steps", [("sigterm", 100), ("ctrl_c", 40)])
def test_sweep_stopped_by_sigterm_or_ctrl_c_has_its_cell_save_its_step_then_resumes_it(tmp_path, synthetic_cache,
                                                                                       how, max_steps):
    """A SIGTERM to the sweep alone (as `kill PID`), or Ctrl-C in its terminal (a SIGINT to the sweep and its cell),
    while its cell trains: the sweep passes a SIGTERM on, waits for the cell to save the state of the step it was in,
    and exits with 143 (130); the same command resumes the cell there."""
    runs = tmp_path / "runs"
    path = _write_sweep(tmp_path / "stop.yaml", draws=[0],
                        overrides=[*TINY, f"trainer.max_steps={max_steps}", "trainer.val_every_n_steps=10"])
    args = ["sweep", str(path), *_execution_overrides(runs, synthetic_cache)]
    last = runs / "synthetic" / "supervised" / "frac0.5" / "draw0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + SUBPROCESS_TIMEOUT_S
        while not last.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)  # the first validation's checkpoint: training, with the stop handlers installed
        assert last.is_file(), "the cell wrote no checkpoint in time"
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        out, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        proc.kill()
    name, code = ("SIGTERM", STOPPED_EXIT_CODE) if how == "sigterm" else ("Ctrl-C", 130)
    assert proc.returncode == code, out[-2000:]
    assert f"[sweep] stopped by {name}" in out and f"stopped by {name}" in out.split("[sweep] stopped")[0]
    assert not _processes_mentioning(str(runs)), "the cell outlived the stopped sweep"
    assert not _metrics_files(runs)
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= stopped_at < max_steps
    if "saved to" not in out:  # stopped at a validation: its checkpoint, or the one before
        assert stopped_at % 10 == 0 and f"the same command resumes from step {stopped_at}" in out
    else:
        assert f"stopped by {name} after step {stopped_at}, saved to {last}" in out

    assert main(args) == 0
    [metrics] = [json.loads(p.read_text()) for p in _metrics_files(runs)]
    assert metrics["steps"] == max_steps and metrics["resumed_from_step"] == stopped_at


def test_ddp_test_metrics_equal_one_process_per_case(smoke_runs, tmp_path):
    """trainer.test of one checkpoint on 2 gloo processes gives the single-process per-case Dice, every case once,
    on an odd number of test cases (so the DistributedSampler pads one duplicate)."""
    run = smoke_runs / "synthetic" / "mean_teacher" / "frac0.5" / "draw0"
    out = tmp_path / "ddp.json"
    done = subprocess.run([sys.executable, str(DDP_SCRIPT), str(run), str(out), "2"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    with open(run / "per_case.csv") as f:  # train()'s own single-process trainer.test of last.ckpt
        single = [r for r in csv.DictReader(f) if r["checkpoint"] == "last"]
    n_test = json.loads((run / "metrics.json").read_text())["n_test"]
    assert n_test % 2 == 1 and len(single) == 2 * n_test  # student and teacher
    assert sorted((r["model"], r["case_id"]) for r in ddp["rows"]) == sorted((r["model"], r["case_id"]) for r in single)
    ddp_rows = {(r["model"], r["case_id"]): r for r in ddp["rows"]}
    for row in single:
        other = ddp_rows[row["model"], row["case_id"]]
        for column in (c for c in row if c.startswith(("dice_", "hd95_"))):
            assert other[column] == pytest.approx(float(row[column]), abs=1e-9), (row["case_id"], column)


def test_slurm_launcher_runs_a_two_cell_sweep_through_submitit_local_executor(tmp_path, synthetic_cache):
    smoke = yaml.safe_load((SWEEPS / "smoke.yaml").read_text())
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({**smoke, "methods": ["supervised"], "fractions": [0.25, 0.5], "launcher": "slurm",
                                    "slurm": {"gpus_per_node": 0, "timeout_min": 10}}))
    runs = tmp_path / "runs"
    records = tmp_path / "records"
    records.mkdir()
    sweep = load_sweep(path, _execution_overrides(runs, synthetic_cache), records)
    assert run_sweep(sweep, slurm_cluster="local", slurm_poll_s=0.5) == 0
    assert sorted(json.loads(p.read_text())["fraction"] for p in _metrics_files(runs)) == [0.25, 0.5]
    for cell in sweep.cells:  # each job's result is kept in the records as it ends
        assert sorted(p.name for p in (records / cell.relative_dir).iterdir()) == [
            "config.yaml", "metrics.json", "per_case.csv"]
        kept, ran = records / cell.relative_dir / "per_case.csv", cell.run_dir / "per_case.csv"
        assert kept.read_bytes() == ran.read_bytes()
    assert list((runs / ".submitit" / "cluster").glob("*_log.out")), "submitit's job logs are kept beside the runs"
