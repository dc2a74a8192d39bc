"""DDP training (2 gloo processes on the CPU) computes the single-process protocol: each step's global batch is the
stream positions one process would have taken, dealt out between the ranks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, TINY

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


@pytest.mark.parametrize("method", ["supervised", "mean_teacher"])
def test_ddp_training_deals_the_protocols_global_batch_out_to_the_ranks(method, tmp_path, synthetic_cache):
    steps, batch = 6, 4
    overrides = [*TINY, "data.fraction=0.5", f"trainer.max_steps={steps}", "trainer.val_every_n_steps=3",
                 f"data.labeled_batch_size={batch}", f"data.unlabeled_batch_size={batch}"]
    positions = tmp_path / "positions"
    positions.mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), method, str(tmp_path / "runs"), str(synthetic_cache),
                           str(positions), *overrides], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert metrics["steps"] == steps and metrics["primary"]["dice_mean"] >= 0
    # The test-selection audit (ssl_bench/run/test_selection_audit.py): each rank scores its share of the (odd number
    # of) test cases and the rows are gathered with the padding duplicate dropped, so the score it selected on is
    # test_best's own.
    audit, primary = metrics["test_selection"], metrics["primary"]["model"]
    assert metrics["n_test"] % 2 == 1 and audit["validations_scored"] == 2
    assert metrics["results"]["test_best"][primary]["n_cases"] == metrics["n_test"]
    assert metrics["results"]["test_best"][primary]["dice_mean"] == pytest.approx(audit["test_dice_at_selection"],
                                                                                 abs=1e-12)
    ranks = [json.loads((positions / f"rank{r}.json").read_text()) for r in (0, 1)]
    parts = ["labeled", "unlabeled"] if method == "mean_teacher" else ["labeled"]
    assert len(ranks[0]) == len(ranks[1]) == steps
    for step in range(steps):
        for part in parts:
            mine, theirs = ranks[0][step][part], ranks[1][step][part]
            assert len(mine) == len(theirs) == batch // 2
            assert not set(mine) & set(theirs), f"step {step}: the ranks draw different items"
            assert sorted(mine + theirs) == list(range(step * batch, (step + 1) * batch)), \
                f"step {step} {part}: the global batch is the single-process batch"
