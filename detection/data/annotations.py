"""The parsed annotation of one image, shared by every dataset format, and the error bad input raises."""

from dataclasses import dataclass

import numpy as np


class AnnotationError(ValueError):
    """An annotation file, image or entry is unusable; the message names the file and the entry."""


@dataclass(frozen=True, eq=False)  # numpy fields: == would be ambiguous, compare the arrays instead
class ImageAnnotation:
    """One image's boxes in its original pixels (XYXY), with the ones evaluation ignores flagged.

    `ignore` marks COCO crowd regions and VOC `difficult` objects: they never reach training targets,
    and evaluation neither rewards nor penalises detections on them. Labels are contiguous 1..K.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2, every box has positive width and height
    labels: np.ndarray  # (N,) int64 in 1..K
    ignore: np.ndarray  # (N,) bool

    @property
    def num_training_boxes(self) -> int:
        return int((~self.ignore).sum())
