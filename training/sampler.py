"""A distributed training sampler that resumes mid-epoch exactly, and the dataset wrapper it feeds.

Each epoch is one seeded permutation of the dataset, cut to whole global batches; rank r takes
every world_size-th entry, so global batch t is the same set of samples whatever the number of
ranks. Every entry carries a seed too, and `SeededDataset` runs the augmentation under it: the
crop and flip of a sample depend on (seed, epoch, position) alone, not on the worker that loads it
or on whether the run was interrupted.
"""

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields (index, augmentation seed) for one rank; `set_epoch(epoch, start_step)` resumes mid-epoch."""

    def __init__(
        self,
        *,
        dataset_size: int,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if global_batch_size % world_size:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by {world_size} processes")
        if dataset_size < global_batch_size:
            raise ValueError(f"dataset has {dataset_size} samples, fewer than one batch of {global_batch_size}")
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        # The tail that does not fill a global batch is dropped; the next epoch's permutation differs.
        self.steps_per_epoch = dataset_size // global_batch_size
        self.batch_size = global_batch_size // world_size
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate `epoch` from its `start_step`-th batch (the first batch not yet trained on)."""
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}), got {start_step}")
        self.epoch, self.start_step = epoch, start_step

    def epoch_keys(self, epoch: int) -> list[tuple[int, int]]:
        """The whole epoch's (index, seed) list over all ranks, in global order."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            order = torch.randperm(self.dataset_size, generator=generator)
        else:
            order = torch.arange(self.dataset_size)
        seeds = torch.randint(0, 2**62, (self.dataset_size,), generator=generator)
        used = self.steps_per_epoch * self.global_batch_size
        return list(zip(order[:used].tolist(), seeds[:used].tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.epoch_keys(self.epoch)[self.rank :: self.world_size]
        return iter(mine[self.start_step * self.batch_size :])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size


class SeededDataset(Dataset):
    """Applies `transform` to `dataset[index]`'s image under a given seed, leaving the global RNG untouched.

    Keys are (index, seed) pairs from `ResumableSampler`, or plain indices for deterministic
    (evaluation) transforms.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        if isinstance(key, tuple):
            index, seed = key
            image, label = self.dataset[index]
            # torchvision's v2 transforms draw from torch's global CPU generator: seed it for this
            # sample and put its state back, so the training process's own stream is never advanced
            # by data loading (num_workers=0 included). torch.manual_seed / fork_rng would do the
            # same at ~300 us a call (they visit every device); the CPU generator alone costs ~2 us.
            generator = torch.default_generator
            saved = generator.get_state()
            generator.manual_seed(seed)
            try:
                return self.transform(image), label
            finally:
                generator.set_state(saved)
        image, label = self.dataset[key]
        return self.transform(image), label
