import os
from pathlib import Path

import pytest
import torch

# Tests never talk to W&B; the one W&B test turns offline mode on explicitly.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# A very small network, patch and dataset: a synthetic run through the CLI takes seconds on two CPU cores.
TINY = ["model.channels=[4,8,16]", "model.strides=[2,2]", "data.patch_size=[16,16,16]",
        "data.synthetic.shape=[20,20,20]", "data.synthetic.n_cases=12", "trainer.enable_progress_bar=false",
        "logging.wandb=false"]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and oversubscribed cores (a benchmark or a second test
    process beside the suite) slow them down by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """One cache folder for generated synthetic datasets, shared by the whole session."""
    return tmp_path_factory.mktemp("synthetic_cache")
