"""Run identity (ssl_bench/run/identity.py) and the shared result writer (ssl_bench/utils/io.py): which runs are the
same, which results count as finished, and files readable by the team."""

import json
import os
import stat

import pytest
from omegaconf import OmegaConf

from ssl_bench.config import load_config, to_yaml
from ssl_bench.run.identity import RESULT_KEYS, UnreadableResult, comparable, config_differences, read_metrics
from ssl_bench.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    """Sets the process's umask for one test (a shared cluster's 022 or a group project's 002)."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_are_written_with_the_processes_umask(tmp_path, umask, mask, mode):
    """Regression: the writer made every result (metrics.json, per_case.csv, config.yaml, records, summaries) 0600
    through tempfile.mkstemp, so teammates on shared storage could not read them."""
    umask(mask)
    written = [atomic_write_text(tmp_path / "a" / "config.yaml", "x: 1\n"), atomic_write_json(tmp_path / "m.json", {}),
               atomic_write_bytes(tmp_path / "per_case.csv", b"case\n")]
    written.append(atomic_write_text(tmp_path / "m.json", "{}\n"))  # replacing a file
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [mode] * 4
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "config.yaml", "m.json", "per_case.csv"]  # no temp


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    atomic_write_text(tmp_path / "m.json", "old")
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "m.json", {"not": object()})
    assert (tmp_path / "m.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def _result() -> dict:
    return {key: 1 for key in RESULT_KEYS}


@pytest.mark.parametrize("content, problem", [
    ("", "empty"), ("  \n", "empty"), ('{"dataset": "hippo', "not valid JSON"), ("[1, 2]", "holds no complete result"),
    ('{"dataset": "hippocampus"}', "holds no complete result (no method, fraction, draw, primary, results, steps)")])
def test_a_metrics_file_that_holds_no_result_is_named_with_its_problem(tmp_path, content, problem):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(UnreadableResult) as err:
        read_metrics(path)
    assert str(err.value).startswith(f"{path}: {problem}")
    path.write_text(json.dumps(_result()))
    assert read_metrics(path) == _result()


def _saved(tmp_path, cfg) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    return path


def test_where_a_run_is_and_how_it_logs_are_no_part_of_its_identity(tmp_path):
    cfg = load_config("supervised", "synthetic", ["run.runs_dir=/scratch/runs"])
    elsewhere = load_config("supervised", "synthetic", ["run.runs_dir=../runs", "data.cache_dir=/tmp/cache",
                                                        "logging.wandb=false", "trainer.log_every_n_steps=1",
                                                        "data.root=/data"])
    assert config_differences(_saved(tmp_path, cfg), elsewhere) == []
    assert config_differences(_saved(tmp_path, cfg), load_config("supervised", "synthetic", [
        "run.runs_dir=/scratch/runs", "trainer.max_steps=3", "trainer.seed=1"])) == ["trainer.max_steps", "trainer.seed"]


@pytest.mark.parametrize("runs_dir, init_from", [
    ("/scratch/runs", "/scratch/runs/synthetic/contrastive_pretrain/draw0/checkpoints/backbone.pt"),
    ("runs", "runs/synthetic/contrastive_pretrain/draw0/checkpoints/backbone.pt"),
    ("../x/../runs", "../runs/synthetic/contrastive_pretrain/draw0/checkpoints/backbone.pt")])
def test_a_backbone_under_the_runs_folder_is_compared_relative_to_it(tmp_path, runs_dir, init_from):
    """A contrastive fine-tuning's model.init_from is its pretraining's backbone under the runs folder: the run and a
    copy of it under another runs folder are the same run, one from another backbone is not."""
    def config(runs, backbone):
        return OmegaConf.to_container(load_config("contrastive", "synthetic", [
            f"run.runs_dir={runs}", f"model.init_from={backbone}"]))
    assert comparable(config(runs_dir, init_from))["model.init_from"] == (
        "<run.runs_dir>/synthetic/contrastive_pretrain/draw0/checkpoints/backbone.pt")
    moved = load_config("contrastive", "synthetic", [
        "run.runs_dir=/new/runs", "model.init_from=/new/runs/synthetic/contrastive_pretrain/draw0/checkpoints/backbone.pt"])
    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(config(runs_dir, init_from)))
    assert config_differences(saved, moved) == []
    other = load_config("contrastive", "synthetic", ["run.runs_dir=/new/runs", "model.init_from=/my/backbone.pt"])
    assert config_differences(saved, other) == ["model.init_from"]
