"""A distributed batch sampler that resumes mid-epoch exactly, and the dataset wrapper it feeds.

Each epoch is one seeded permutation of the dataset, cut to whole global batches; rank r takes
every world_size-th entry, so (without grouping) global batch t is the same set of samples
whatever the number of ranks. Every entry carries a seed too, and `SeededDataset` runs the
augmentation under it: the crop and flip of a sample depend on (seed, epoch, position) alone, not on
the worker that loads it or on whether the run was interrupted. Batches can be grouped by aspect
ratio (detection) and still resume at any batch, since an epoch's batches are a pure function of
(seed, epoch).
"""

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

Key = tuple[int, int]  # (dataset index, augmentation seed)


class ResumableBatchSampler(Sampler[list[Key]]):
    """This rank's batches of (index, seed) keys; `set_epoch(epoch, start_step)` resumes mid-epoch.

    Use as `DataLoader(..., batch_sampler=sampler)`. With `group_ids` (e.g. aspect-ratio groups),
    each batch holds one group, as torchvision's GroupedBatchSampler: keys wait in their group's
    bucket until it fills, and the leftovers of the epoch are batched together at its end.
    """

    def __init__(self, *, dataset_size: int, global_batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, group_ids: Sequence[int] | None = None) -> None:  # fmt: skip
        if global_batch_size % world_size:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by {world_size} processes")
        if dataset_size < global_batch_size:
            raise ValueError(f"dataset has {dataset_size} samples, fewer than one batch of {global_batch_size}")
        if group_ids is not None and len(group_ids) != dataset_size:
            raise ValueError(f"group_ids has {len(group_ids)} entries for {dataset_size} samples")
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.group_ids = None if group_ids is None else list(group_ids)
        # The tail that does not fill a global batch is dropped; the next epoch's permutation differs.
        self.steps_per_epoch = dataset_size // global_batch_size
        self.batch_size = global_batch_size // world_size
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate `epoch` from its `start_step`-th batch (the first batch not yet trained on)."""
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}), got {start_step}")
        self.epoch, self.start_step = epoch, start_step

    def epoch_keys(self, epoch: int) -> list[Key]:
        """The whole epoch's (index, seed) list over all ranks, in global order."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            order = torch.randperm(self.dataset_size, generator=generator)
        else:
            order = torch.arange(self.dataset_size)
        seeds = torch.randint(0, 2**62, (self.dataset_size,), generator=generator)
        used = self.steps_per_epoch * self.global_batch_size
        return list(zip(order[:used].tolist(), seeds[:used].tolist()))

    def epoch_batches(self, epoch: int) -> list[list[Key]]:
        """This rank's batches of `epoch`, all `steps_per_epoch` of them."""
        mine = self.epoch_keys(epoch)[self.rank :: self.world_size]
        if self.group_ids is None:
            return [mine[start : start + self.batch_size] for start in range(0, len(mine), self.batch_size)]
        batches, buckets = [], defaultdict(list)
        for key in mine:
            bucket = buckets[self.group_ids[key[0]]]
            bucket.append(key)
            if len(bucket) == self.batch_size:
                batches.append(bucket.copy())
                bucket.clear()
        leftovers = [key for group in sorted(buckets) for key in buckets[group]]
        batches += [leftovers[start : start + self.batch_size] for start in range(0, len(leftovers), self.batch_size)]
        return batches

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.epoch_batches(self.epoch)[self.start_step :])

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step


class SeededDataset(Dataset):
    """Applies `transform` to `dataset[index]`'s image under a given seed, leaving the global RNG untouched.

    Keys are (index, seed) pairs from `ResumableBatchSampler`, or plain indices for deterministic
    (evaluation) transforms.
    """

    def __init__(self, dataset: Dataset, transform: Callable[..., Any], *, joint: bool = False) -> None:
        """joint: call `transform(image, target)` and return its pair (detection: boxes move with the
        image); otherwise `transform(image)` and the label passes through (classification)."""
        self.dataset = dataset
        self.transform = transform
        self.joint = joint

    def _apply(self, image: Any, label: Any) -> tuple[Any, Any]:
        if self.joint:
            return self.transform(image, label)
        return self.transform(image), label

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
                return self._apply(image, label)
            finally:
                generator.set_state(saved)
        image, label = self.dataset[key]
        return self._apply(image, label)
