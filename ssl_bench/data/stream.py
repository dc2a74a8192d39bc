"""A training stream that a resumed run continues exactly: which case comes at each position of the stream and how
it is augmented depend on the position alone, never on what the process did before.

``StreamSampler`` draws the cases of the whole budget with replacement from a generator of its own and yields
``(position, case index)`` from a start position; ``PositionSeeded`` seeds the random transforms of a MONAI
dataset from the stream's seed and the position before it makes that item. A run resumed at step s starts its
streams at position s x batch size and so sees the batches an uninterrupted run would have seen; with the
random state of the training step (dropout, noise) restored from the checkpoint
(ssl_bench.run.callbacks.TrainingRandomState), it computes what that run computes.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, List, Sequence, Tuple

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from monai.transforms import Compose, Randomizable
from torch.utils.data import Dataset, DistributedSampler, Sampler


def stream_seed(run_seed: int, stream: str) -> int:
    """A seed per (run seed, stream name), so that the labeled and unlabeled streams differ."""
    return int(np.random.SeedSequence([run_seed, *stream.encode()]).generate_state(1)[0])


class OneEpochStreams(pl.Callback):
    """A run fed by streams is one Lightning epoch over its loaders, resumed or not.

    A resumed run's loaders hold only the streams' remaining positions, but the checkpoint tells Lightning how many
    batches its epoch had taken, and Lightning counts those against the new loaders' length: a run resumed at step s
    of N ended its epoch at step N - s and went on in a second one. Whatever Lightning does at an epoch start then
    happened in the resumed run only: the loaders were made again (without a reload, the streams would have started
    over), the validation loader too at its next validation (MONAI's DataLoader re-seeds torch's global generator
    when it is made without workers), and a loader without a generator of its own draws its base seed from the
    global generator for each new iterator (the contrastive pretraining's): dropout and noise from that point on
    differed from the uninterrupted run's (final weights off by up to 5e-3 for a run stopped at step 70 of 150,
    validating every 50). The loaders of the resumed run start at the checkpoint's step, so the epoch's batches
    taken, as the checkpoint counts them, are set to none; the training's total count (which schedules validation)
    is kept."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if trainer.state.fn != TrainerFn.FITTING or not progress:
            return
        current = progress["current"]
        taken = current["ready"]
        for counter in ("ready", "started", "processed", "completed"):
            current[counter] -= taken  # "completed" may be -1: Lightning adds the step it was saved in

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_step < trainer.max_steps:  # a Lightning whose epoch bookkeeping differs from this one's
            raise RuntimeError(f"the training epoch ended at step {trainer.global_step} of {trainer.max_steps}: the "
                               "next one would start the data streams over")


@contextmanager
def streams_resume_by_position():
    """Around ``trainer.fit``: Lightning warns that a loader without ``state_dict`` resumed mid-epoch gives
    unreliable results; a position-keyed stream does not (it starts at the checkpoint's step), so the warning
    would only mislead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        yield


class StreamSampler(DistributedSampler):
    """``(position, item index)`` for positions ``start`` .. ``n_samples - 1`` of a stream of items drawn with
    replacement by a generator seeded with ``seed`` alone: the same stream however late it starts.

    Under DDP (``world_size`` > 1) rank r takes the positions r, r + W, r + 2W, ..., so that W ranks taking
    batch / W items a step together take the positions one process takes. It is a DistributedSampler only so that
    Lightning leaves it as it is: Lightning would otherwise wrap it in a sampler of its own that shuffles the stream.
    """

    def __init__(self, n_items: int, n_samples: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        Sampler.__init__(self)
        self.n_items, self.n_samples, self.seed, self.start = n_items, n_samples, seed, start
        self.rank, self.num_replicas, self.shuffle, self.epoch = rank, world_size, False, 0

    def _positions(self) -> range:
        return range(self.start + self.rank, self.n_samples, self.num_replicas)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed)
        items = torch.randint(self.n_items, (self.n_samples,), generator=generator).tolist()
        return iter([(position, items[position]) for position in self._positions()])

    def __len__(self) -> int:
        return len(self._positions())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # the stream does not depend on epochs


def _randomizable(transform) -> List[Randomizable]:
    """The random transforms of a (nested) Compose, in order."""
    if isinstance(transform, Compose):
        return [t for child in transform.transforms for t in _randomizable(child)]
    return [transform] if isinstance(transform, Randomizable) else []


class PositionSeeded(Dataset):
    """``dataset[(position, index)]``: item ``index`` of a MONAI dataset (its ``transform`` a Compose), with the
    random transforms seeded by (seed, position).

    Each random transform is handed a RandomState of this object's for every item (MONAI passes it on to the
    transforms it wraps, and MONAI's DataLoader may have seeded others meanwhile), re-seeded in place: constructing
    a RandomState costs 0.25 ms, re-seeding one 3 us."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self._transforms = _randomizable(dataset.transform)
        self._states = [np.random.RandomState() for _ in self._transforms]

    def __len__(self) -> int:
        return len(self.dataset)

    def seed_transforms(self, position: int) -> None:
        """Give each random transform its random state for ``position``."""
        seeds = np.random.SeedSequence([self.seed, position]).generate_state(len(self._states))
        for transform, state, seed in zip(self._transforms, self._states, seeds):
            state.seed(int(seed))
            transform.set_random_state(state=state)

    def __getitem__(self, key: Sequence[int]):
        position, index = key
        self.seed_transforms(position)
        item = self.dataset[index]
        item["position"] = position  # what a training step seeds its own randomness from (position_generator)
        return item


def position_generator(seed: int, purpose: str, positions: torch.Tensor, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by the run's seed, a ``purpose`` (e.g. "cutmix") and the stream positions of a
    batch: randomness a training step draws from it (strong augmentations, mixing boxes) depends on the batch's
    positions alone, so a resumed run draws exactly what an uninterrupted one drew, on any rank of a DDP run."""
    entropy = [seed, *purpose.encode(), *(int(p) for p in positions.reshape(-1).tolist())]
    state = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    return torch.Generator(device=device).manual_seed(state)
