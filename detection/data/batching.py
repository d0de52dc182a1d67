"""Batching for detection: aspect-ratio grouped batches (less padding), a collate for lists, and how many
workers decode them by default."""

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from torch.utils.data import Sampler

# Decoding workers (DataLoader processes, predict's threads): 4, or the cores this process may use if fewer
# (above that, torch's DataLoader warns and the workers only contend).
DEFAULT_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class SizedDetectionDataset(Protocol):
    def __len__(self) -> int: ...
    def get_image_size(self, index: int) -> tuple[int, int]: ...


def aspect_ratio_group_ids(dataset: SizedDetectionDataset, *, bins_per_side: int = 3) -> list[int]:
    """Group of each image by width/height, in 2*bins_per_side+2 log-spaced bins between 1/2 and 2
    (torchvision references' `create_aspect_ratio_groups`); 0 puts every image in one group."""
    ratios = [width / height for height, width in (dataset.get_image_size(i) for i in range(len(dataset)))]
    edges = 2.0 ** np.linspace(-1, 1, 2 * bins_per_side + 1) if bins_per_side > 0 else np.array([1.0])
    return np.digitize(ratios, edges).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images share an aspect-ratio group, drawn in the order of `sampler`.

    Every index of `sampler` is used exactly once. Samples left over in unfilled groups at the end of
    the pass are batched together, so the number of batches is ceil(len(sampler) / batch_size)
    (floor with drop_last) every epoch: DDP ranks always run the same number of steps.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], *, batch_size: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            bucket = pending[self.group_ids[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket.copy()
                bucket.clear()
        leftovers = [index for group in sorted(pending) for index in pending[group]]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start : start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)


def collate_fn(batch: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """A list of (image, target) into (images, targets): images differ in size, the model batches them."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
