"""Batching for detection: aspect-ratio groups (batched together by `training.sampler.ResumableBatchSampler`,
less padding), a collate for lists, and how many workers decode them by default."""

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

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


def collate_fn(batch: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """A list of (image, target) into (images, targets): images differ in size, the model batches them."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
