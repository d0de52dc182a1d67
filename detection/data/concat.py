"""Several detection datasets with the same classes as one, e.g. the paper's VOC "07+12" trainval."""

import bisect
import dataclasses
from collections.abc import Sequence
from typing import Any

from torch.utils.data import ConcatDataset

from detection.data.dataset import DetectionDataset


class ConcatDetection(ConcatDataset):
    """torch's ConcatDataset that keeps `class_names`, `category_ids`, sizes and annotations.

    Image ids are renumbered to the global index (0..N-1): VOC 2007 and 2012 ids would otherwise
    collide, and evaluation needs one id per image.
    """

    def __init__(self, datasets: Sequence[DetectionDataset]) -> None:
        super().__init__(datasets)
        first = datasets[0]
        for position, dataset in enumerate(datasets[1:], start=1):
            if dataset.class_names != first.class_names or dataset.category_ids != first.category_ids:
                raise ValueError(
                    f"dataset {position} has classes {dataset.class_names} (ids {dataset.category_ids}), "
                    f"dataset 0 has {first.class_names} (ids {first.category_ids}): they cannot be concatenated"
                )
        self.class_names = list(first.class_names)
        self.category_ids = list(first.category_ids)
        self.annotations = [
            dataclasses.replace(annotation, image_id=index)
            for index, annotation in enumerate(a for dataset in datasets for a in dataset.annotations)
        ]

    def get_image_size(self, index: int) -> tuple[int, int]:
        """(height, width) without decoding the image."""
        annotation = self.annotations[index]
        return annotation.height, annotation.width

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        if index < 0:
            index += len(self)
        part = bisect.bisect_right(self.cumulative_sizes, index)
        offset = index - (self.cumulative_sizes[part - 1] if part > 0 else 0)
        image, target = self.datasets[part][offset]
        target["image_id"] = index
        return image, target
