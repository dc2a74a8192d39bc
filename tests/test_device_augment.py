"""The training batches made on the device equal the MONAI chain's, bit for bit, for every kind of stream."""

import pytest
import torch

from ssl_bench.config import load_config
from ssl_bench.registry import get_method
from ssl_bench.run.train import prepare_data
from tests.conftest import TINY


def _batches(cfg, method, on_device: bool, n: int):
    cfg = cfg.copy()
    cfg.data.augment_on_device = on_device
    method_cls = get_method(method)
    dm = prepare_data(cfg, method_cls).datamodule(cfg, method_cls)
    dm.setup("fit")
    batches = dm.training_batches()
    return [next(batches) for _ in range(n)]


@pytest.mark.parametrize("method,overrides", [
    ("mean_teacher", []),  # 3D, labeled + unlabeled streams
    ("mean_teacher", ["data.spatial_dims=2", "data.patch_size=[16,16]", "data.slice_axis=1"]),  # 2D slices
    ("smiler", ["data.partial.alpha=0.5", "data.fraction=1.0"]),  # voxel_index and removed organs travel too
    ("supervised", ["data.patch_size=[24,12,16]", "data.flip_prob=0.3"]),  # padding on one axis, crops on others
])
def test_device_batches_equal_the_monai_chains_bit_for_bit(synthetic_cache, method, overrides):
    cfg = load_config(method, "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY, *overrides])
    chain, device = _batches(cfg, method, False, 4), _batches(cfg, method, True, 4)
    for step, (expected, got) in enumerate(zip(chain, device)):
        assert expected.keys() == got.keys()
        for part in expected:
            assert expected[part].keys() <= got[part].keys() | {"index"}, part
            for key, value in expected[part].items():
                value = torch.as_tensor(value)
                assert torch.equal(got[part][key], value.as_subclass(torch.Tensor)), f"step {step} {part}/{key}"


def test_device_batches_come_from_a_loader_with_workers_too(synthetic_cache):
    cfg = load_config("mean_teacher", "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY])
    plain = _batches(cfg, "mean_teacher", True, 2)
    cfg.data.num_workers = 1
    workers = _batches(cfg, "mean_teacher", True, 2)
    for a, b in zip(plain, workers):
        assert torch.equal(a["unlabeled"]["image"], b["unlabeled"]["image"])
        assert torch.equal(a["labeled"]["label"], b["labeled"]["label"])


@pytest.mark.parametrize("method,overrides", [("mean_teacher", []), ("smiler", ["data.partial.alpha=0.5"])])
def test_the_loader_hands_over_plain_data_not_tensors(synthetic_cache, method, overrides):
    """A loader worker puts every tensor of a batch in a shared-memory file of its own, which both processes pay for:
    with each item's spacing and annotation flags as tensors, a worker's batch of 4 parameters reached the training
    process 4 ms after it was asked for, against 0.2 ms to make it in the process (stack / bare 0.49 with one worker,
    0.75 without, on a tiny network). The loader's batches hold Python values and numpy arrays only; the training
    process makes their tensors (equal to the MONAI chain's batches: the test above)."""
    import numpy as np
    cfg = load_config(method, "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY, *overrides])
    method_cls = get_method(method)
    dm = prepare_data(cfg, method_cls).datamodule(cfg, method_cls)
    dm.setup("fit")
    raw, _, _ = next(iter(dm.train_dataloader()))

    def leaves(value):
        if isinstance(value, dict):
            return [leaf for v in value.values() for leaf in leaves(v)]
        if isinstance(value, (list, tuple)):
            return [leaf for v in value for leaf in leaves(v)]
        return [value]

    found = {type(leaf) for leaf in leaves(raw)}
    assert not any(issubclass(kind, torch.Tensor) for kind in found), found
    assert np.ndarray in found and int in found and float in found
    if method == "smiler":
        assert "annotated" in raw["labeled"], "the partial-annotation flags travel too"


@pytest.mark.parametrize("on_device", [True, False])
def test_a_training_step_reads_no_number_from_the_device(synthetic_cache, on_device):
    """What a step reads as Python numbers (HOST_KEYS: crop case, start, slice, stream position) stays on the host when
    a batch moves to the training device: a read from a GPU makes the host wait for the device's queue, every step.
    The meta device holds no values, so any such read of a moved tensor fails here."""
    from ssl_bench.data.device_augment import HOST_KEYS
    cfg = load_config("mean_teacher", "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY])
    cfg.data.augment_on_device = on_device
    method_cls = get_method("mean_teacher")
    dm = prepare_data(cfg, method_cls).datamodule(cfg, method_cls)
    dm.setup("fit")
    raw, _, _ = next(iter(dm.train_dataloader()))
    moved = dm.transfer_batch_to_device(raw, torch.device("meta"), 0)
    for part, values in moved.items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                assert value.device.type == ("cpu" if key in HOST_KEYS else "meta"), f"{part}/{key}"
    batch = dm.on_after_batch_transfer(moved, 0)
    for part in ("labeled", "unlabeled"):
        assert batch[part]["image"].device.type == "meta"
        assert batch[part]["image"].shape[2:] == tuple(cfg.data.patch_size)
        assert batch[part]["position"].device.type == "cpu"
