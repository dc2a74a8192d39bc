"""The slurm launcher (ssl_bench/sweep/slurm.py), through submitit's local executor."""

import json

import yaml

from ssl_bench.sweep import load_sweep, run_sweep
from ssl_bench.sweep.slurm import _slurm_overrides
from ssl_bench.sweep.spec import SlurmConfig
from sweep_helpers import SWEEPS, execution_overrides, metrics_files, one_thread_per_process  # noqa: F401 (autouse)


def test_a_jobs_gpus_decide_its_devices_and_strategy():
    assert _slurm_overrides(SlurmConfig(gpus_per_node=0)) == [
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1"]
    assert _slurm_overrides(SlurmConfig(gpus_per_node=1)) == [
        "trainer.accelerator=gpu", "trainer.devices=1", "trainer.num_nodes=1", "trainer.strategy=auto"]
    assert _slurm_overrides(SlurmConfig(gpus_per_node=4, nodes=2))[-1] == "trainer.strategy=ddp"


def test_slurm_launcher_runs_a_two_cell_sweep_through_submitit_local_executor(tmp_path, synthetic_cache):
    smoke = yaml.safe_load((SWEEPS / "smoke.yaml").read_text())
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({**smoke, "methods": ["supervised"], "fractions": [0.25, 0.5], "launcher": "slurm",
                                    "slurm": {"gpus_per_node": 0, "timeout_min": 10}}))
    runs = tmp_path / "runs"
    records = tmp_path / "records"
    records.mkdir()
    sweep = load_sweep(path, execution_overrides(runs, synthetic_cache), records)
    assert run_sweep(sweep, slurm_cluster="local", slurm_poll_s=0.5) == 0
    assert sorted(json.loads(p.read_text())["fraction"] for p in metrics_files(runs)) == [0.25, 0.5]
    for cell in sweep.cells:  # each job's result is kept in the records as it ends
        assert sorted(p.name for p in (records / cell.relative_dir).iterdir()) == [
            "config.yaml", "metrics.json", "per_case.csv"]
        kept, ran = records / cell.relative_dir / "per_case.csv", cell.run_dir / "per_case.csv"
        assert kept.read_bytes() == ran.read_bytes()
    assert list((runs / ".submitit" / "cluster").glob("*_log.out")), "submitit's job logs are kept beside the runs"
