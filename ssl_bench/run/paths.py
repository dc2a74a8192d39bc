"""Where a run's files go: its run folder, ``runs/<dataset>[-<protocol>]/<method>[-<tag>]/<labeled setting>/draw<d>/``,
and the folder of a pretraining stage shared by the runs of one draw."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ssl_bench.run.labeled import LabeledAmount


def labeled_setting(cfg: DictConfig) -> str:
    """How the run's labeled patients were chosen, as its folder names it: frac<f> or labeled<n>, with -first for
    data.labeled_selection=first (ssl_bench/run/labeled.py)."""
    return LabeledAmount.of(cfg.data).folder


def dataset_dir_name(cfg: DictConfig) -> str:
    """The runs folder of a dataset: its name, with its protocol preset when one is set (acdc-ssl4mis), so that
    runs of another protocol never share a folder."""
    return cfg.data.name + (f"-{cfg.protocol}" if cfg.protocol else "")


def run_dir(cfg: DictConfig) -> Path:
    """runs/<dataset>[-<protocol>]/<method>[-<tag>]/<frac<f> | labeled<n>>[-first]/draw<d>/ (labeled_setting)."""
    method = cfg.method.name + (f"-{cfg.run.tag}" if cfg.run.tag else "")
    return Path(cfg.run.runs_dir) / dataset_dir_name(cfg) / method / labeled_setting(cfg) / f"draw{cfg.data.draw}"


def pretrain_run_dir(cfg: DictConfig, stage: str) -> Path:
    """runs/<dataset>[-<protocol>]/<stage>[-<tag>]/draw<d>/: a stage shared by every fraction of one draw."""
    name = stage + (f"-{cfg.run.tag}" if cfg.run.tag else "")
    return Path(cfg.run.runs_dir) / dataset_dir_name(cfg) / name / f"draw{cfg.data.draw}"
