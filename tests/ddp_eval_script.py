"""Per-case test metrics of a run's last checkpoint, evaluated by ``trainer.test`` on N CPU processes.

Standalone on purpose (not a test module): Lightning's DDP launcher starts the other ranks by re-running
the command line, which under pytest would re-run pytest. tests/test_sweep.py runs it in a subprocess:

    python tests/ddp_eval_script.py RUN_DIR OUT_JSON DEVICES

With DEVICES > 1 it uses strategy=ddp (gloo on CPU). Only global rank 0 writes OUT_JSON: the rows of
every evaluated network, gathered across ranks by the base module.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import OmegaConf

from ssl_bench.registry import get_method
from ssl_bench.run.callbacks import CHECKPOINTS, LAST
from ssl_bench.run.train import prepare_data


def evaluate(run: Path, out: Path, devices: int) -> None:
    cfg = OmegaConf.load(run / "config.yaml")
    method_cls = get_method(cfg.method.name)
    data = prepare_data(cfg, method_cls, training=False)
    dm, manifest = data.datamodule(cfg, method_cls), data.manifest
    module = method_cls(cfg, class_names=manifest.labels, case_ids=[c.id for c in manifest.cases])
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.test(module, datamodule=dm, ckpt_path=str(run / CHECKPOINTS / LAST), verbose=False)
    if trainer.is_global_zero:
        out.write_text(json.dumps({"world_size": trainer.world_size, "rows": module.test_rows}))


if __name__ == "__main__":
    evaluate(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
