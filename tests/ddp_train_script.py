"""One run trained by ``train()`` under strategy=ddp on 2 CPU (gloo) processes, recording the stream positions each
rank's training steps receive.

Standalone on purpose (not a test module): Lightning's DDP launcher starts the other rank by re-running the command
line, which under pytest would re-run pytest. tests/test_ddp_training.py runs it in a subprocess:

    python tests/ddp_train_script.py METHOD RUNS_DIR CACHE_DIR POSITIONS_DIR [overrides...]

Each rank writes POSITIONS_DIR/rank<r>.json: per training step, the positions of its labeled and unlabeled items.
"""

import json
import sys
from pathlib import Path

from ssl_bench.config import load_config
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.run.train import train


def main(method: str, runs: str, cache: str, positions_dir: str, overrides) -> None:
    seen = []
    training_step = SegmentationMethod.training_step

    def recording_step(self, batch, batch_idx):
        seen.append({part: batch[part]["position"].tolist() for part in batch})
        Path(positions_dir, f"rank{self.global_rank}.json").write_text(json.dumps(seen))
        return training_step(self, batch, batch_idx)

    SegmentationMethod.training_step = recording_step
    cfg = load_config(method, "synthetic", [f"run.runs_dir={runs}", f"data.cache_dir={cache}", "trainer.accelerator=cpu",
                                            "trainer.devices=2", "trainer.strategy=ddp", *overrides])
    train(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:5], sys.argv[5:])
