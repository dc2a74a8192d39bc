import os
from pathlib import Path

import pytest

# Tests never talk to W&B; the one W&B test turns offline mode on explicitly.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """One cache folder for generated synthetic datasets, shared by the whole session."""
    return tmp_path_factory.mktemp("synthetic_cache")
