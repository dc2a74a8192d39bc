"""The training data module: what its batches hold, and its position-keyed streams."""

import lightning.pytorch as pl
import torch
from monai import transforms as T
from monai.data import CacheDataset, get_track_meta, set_track_meta

from ssl_bench.config import load_config
from ssl_bench.data.stream import PositionSeeded, StreamSampler, stream_seed
from ssl_bench.registry import get_method
from ssl_bench.run.train import prepare_data
from tests.conftest import TINY


def _first_batches(cfg, method_cls, setup: bool, n: int = 3):
    dm = prepare_data(cfg, method_cls).datamodule(cfg, method_cls)
    if setup:
        dm.setup("fit")
    pl.seed_everything(0)
    loader = dm.training_batches()
    return [next(loader) for _ in range(n)]


def test_training_batches_are_plain_tensors_with_the_values_metadata_tracking_gives(synthetic_cache):
    """Regression (make perf): MONAI's metadata tracking cost as much as the augmentation itself. The data module
    switches it off in setup(); the batches keep every value, bit for bit, and the same random draws (the MONAI chain
    in the loader: data.augment_on_device=false)."""
    cfg = load_config("mean_teacher", "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY,
                                                    "data.augment_on_device=false"])
    method_cls = get_method("mean_teacher")
    tracking = get_track_meta()
    try:
        set_track_meta(True)
        tracked = _first_batches(cfg, method_cls, setup=False)
        plain = _first_batches(cfg, method_cls, setup=True)
        assert not get_track_meta()
    finally:
        set_track_meta(tracking)
    for with_meta, without in zip(tracked, plain):
        for stream in ("labeled", "unlabeled"):
            assert type(with_meta[stream]["image"]) is not torch.Tensor, "tracking on gives MetaTensors"
            for key, value in without[stream].items():
                if torch.is_tensor(value):
                    assert type(value) is torch.Tensor, f"{stream}/{key} carries no metadata"
                    assert torch.equal(value, with_meta[stream][key].as_subclass(torch.Tensor)), f"{stream}/{key}"


def test_a_stream_started_later_is_the_tail_of_the_same_stream():
    full = list(StreamSampler(5, 20, seed=7))
    assert [position for position, _ in full] == list(range(20))
    assert list(StreamSampler(5, 20, seed=7, start=12)) == full[12:] and len(StreamSampler(5, 20, 7, start=12)) == 8
    assert list(StreamSampler(5, 20, seed=8)) != full
    assert stream_seed(0, "labeled") != stream_seed(0, "unlabeled") != stream_seed(1, "unlabeled")


def test_an_item_is_augmented_by_its_position_whatever_came_before():
    images = [{"image": torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4) + k} for k in range(3)]
    augment = T.Compose([T.RandFlipd(keys=["image"], prob=0.5, spatial_axis=a) for a in range(3)]
                        + [T.RandScaleIntensityd(keys=["image"], factors=0.5, prob=1.0)])
    seeded = PositionSeeded(CacheDataset(images, augment, progress=False), seed=3)
    first = seeded[(4, 1)]["image"]
    for key in [(0, 0), (9, 2), (5, 1)]:
        seeded[key]
    assert torch.equal(seeded[(4, 1)]["image"], first)
    assert not torch.equal(seeded[(5, 1)]["image"], first), "another position, another augmentation"


def test_training_batches_carry_their_stream_positions_and_seed_a_generator_by_them(synthetic_cache):
    """A training step draws its own randomness (strong augmentation, mixing boxes) from the stream positions of
    its batch, so a resumed run draws what an uninterrupted one drew."""
    from ssl_bench.data.stream import position_generator
    cfg = load_config("mean_teacher", "synthetic", [f"data.cache_dir={synthetic_cache}", *TINY])
    batches = _first_batches(cfg, get_method("mean_teacher"), setup=True, n=2)
    size = cfg.data.labeled_batch_size
    assert batches[0]["labeled"]["position"].tolist() == list(range(size))
    assert batches[1]["unlabeled"]["position"].tolist() == list(range(size, 2 * size))

    def draw(purpose, positions):
        return torch.rand(3, generator=position_generator(0, purpose, torch.tensor(positions), torch.device("cpu")))

    assert torch.equal(draw("cutmix", [4, 5]), draw("cutmix", [4, 5]))
    assert not torch.equal(draw("cutmix", [4, 5]), draw("cutmix", [6, 7]))
    assert not torch.equal(draw("cutmix", [4, 5]), draw("intensity", [4, 5]))
