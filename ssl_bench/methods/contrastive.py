"""contrastive: global and local contrastive pretraining, then fine-tuning (Chaitanya et al., NeurIPS 2020), as
METHODS.md defines it.

Stage 1 (ssl_bench/pretrain.py) pretrains the backbone without labels on every training-pool image, once per
dataset and draw, in its own run folder ``runs/<dataset>/contrastive_pretrain/draw<d>/``. Stage 2 is this
method: the same backbone, initialised from stage 1's ``checkpoints/backbone.pt`` (``model.init_from``), trained
with DiceCE on the labeled cases, exactly as ``supervised``. train() calls ``prepare_run`` first, which reuses
the draw's pretraining or runs it if it is missing, so ``ssl-bench train --method contrastive`` (and
``make bench METHOD=contrastive``) does both stages and every fraction of a draw shares one pretraining.
metrics.json reports both stages' cost: the fine-tuning's as for every method, the pretraining's as
``pretrain_seconds_per_step``, ``pretrain_wall_time_s`` and ``pretrain_steps``.

An explicit ``model.init_from=<backbone.pt>`` skips stage 1 and fine-tunes from that checkpoint; when it is a
stage-1 run's backbone, metrics.json records that run and its cost as above. Built outside
train() (tests, ``make perf``) with no ``init_from``, the network is randomly initialised: the per-step cost of
fine-tuning is that of ``supervised``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import open_dict

from ssl_bench.config import ContrastiveConfig
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.registry import register_method

# metrics.json keys of the pretraining stage's cost: {metrics key: pretrain.json key}.
PRETRAIN_COST = {"pretrain_seconds_per_step": "seconds_per_step", "pretrain_wall_time_s": "wall_time_s",
                 "pretrain_steps": "steps", "pretrain_run_dir": "run_dir"}


@register_method("contrastive")
class Contrastive(SegmentationMethod):
    config_class = ContrastiveConfig

    @classmethod
    def prepare_run(cls, cfg):
        # Imports the pretraining stack only when it is needed.
        from ssl_bench.pretrain import ensure_pretrained, record_of_backbone
        if cfg.model.init_from:
            record = record_of_backbone(Path(cfg.model.init_from))
            return cfg, {key: record[source] for key, source in PRETRAIN_COST.items()} if record else {}
        record = ensure_pretrained(cfg)
        return cls.run_config(cfg), {key: record[source] for key, source in PRETRAIN_COST.items()}

    @classmethod
    def run_config(cls, cfg):
        from ssl_bench.pretrain import backbone_path
        if cfg.model.init_from:
            return cfg
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.model.init_from = str(backbone_path(cfg))
        return cfg
