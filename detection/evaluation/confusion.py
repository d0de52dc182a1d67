"""Where a detector goes wrong: a confusion matrix over classes plus background, and errors per image.

At one score threshold (0.5 by default) each image's detections and ground-truth boxes are matched one to
one, highest IoU first, at IoU >= 0.5 whatever their classes. A matched pair counts in (true class,
predicted class); a ground-truth box left unmatched is a missed object (true class, background); a
detection left unmatched is a false positive (background, predicted class). Ignored ground truth (COCO
crowds, VOC difficult) takes no part, and detections that overlap it at IoU >= 0.5 are left out.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from detection.evaluation.predictions import EvaluationDataset, Prediction, as_arrays, check_image_ids
from detection.evaluation.voc_eval import box_iou


@dataclass
class ImageErrors:
    """One image's errors at the threshold: detections of no object or of another class, objects missed."""

    image_id: int
    false_positives: int  # unmatched detections plus detections matched to an object of another class
    missed: int  # unmatched objects plus objects matched only by a detection of another class

    @property
    def total(self) -> int:
        return self.false_positives + self.missed


@dataclass
class ConfusionMatrix:
    """counts[true, predicted] over classes 1..K at indices 0..K-1 and background at index K."""

    class_names: list[str]
    counts: np.ndarray
    score_threshold: float
    iou_threshold: float

    @property
    def labels(self) -> list[str]:
        return [*self.class_names, "background"]

    def as_dict(self) -> dict:
        return {
            "rows": "ground truth", "columns": "prediction", "labels": self.labels,
            "counts": self.counts.tolist(), "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
        }  # fmt: skip


def confusion_and_errors(
    dataset: EvaluationDataset,
    predictions: Mapping[int, Prediction],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> tuple[ConfusionMatrix, list[ImageErrors]]:
    """The confusion matrix over the dataset's images and each image's error counts (dataset order)."""
    num_classes = len(dataset.class_names)
    check_image_ids(predictions, [a.image_id for a in dataset.annotations])
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    background = num_classes
    errors = []
    for annotation in dataset.annotations:
        arrays = as_arrays(predictions[annotation.image_id], image_id=annotation.image_id, num_classes=num_classes)
        confident = arrays["scores"] >= score_threshold
        boxes, labels = arrays["boxes"][confident], arrays["labels"][confident]
        ignored = annotation.ignore.astype(bool)
        if ignored.any() and len(boxes):
            on_ignored = (box_iou(boxes, annotation.boxes[ignored].astype(np.float64)) >= iou_threshold).any(axis=1)
            boxes, labels = boxes[~on_ignored], labels[~on_ignored]
        truth_boxes = annotation.boxes[~ignored].astype(np.float64)
        truth_labels = annotation.labels[~ignored]
        pairs = match_by_iou(truth_boxes, boxes, iou_threshold=iou_threshold)
        matched_truth = {t for t, _ in pairs}
        matched_detections = {d for _, d in pairs}
        wrong_class = 0
        for t, d in pairs:
            counts[truth_labels[t] - 1, labels[d] - 1] += 1
            wrong_class += int(truth_labels[t] != labels[d])
        for t in range(len(truth_boxes)):
            if t not in matched_truth:
                counts[truth_labels[t] - 1, background] += 1
        for d in range(len(boxes)):
            if d not in matched_detections:
                counts[background, labels[d] - 1] += 1
        errors.append(
            ImageErrors(
                image_id=annotation.image_id,
                false_positives=len(boxes) - len(pairs) + wrong_class,
                missed=len(truth_boxes) - len(pairs) + wrong_class,
            )
        )
    matrix = ConfusionMatrix(
        class_names=list(dataset.class_names), counts=counts, score_threshold=score_threshold,
        iou_threshold=iou_threshold,
    )  # fmt: skip
    return matrix, errors


def match_by_iou(truth: np.ndarray, detections: np.ndarray, *, iou_threshold: float) -> list[tuple[int, int]]:
    """One-to-one (truth index, detection index) pairs, highest IoU first, each at IoU >= iou_threshold."""
    if len(truth) == 0 or len(detections) == 0:
        return []
    overlaps = box_iou(truth, detections)
    candidates = np.argwhere(overlaps >= iou_threshold)
    order = np.argsort(-overlaps[candidates[:, 0], candidates[:, 1]], kind="stable")
    used_truth, used_detections, pairs = set(), set(), []
    for t, d in candidates[order].tolist():
        if t not in used_truth and d not in used_detections:
            used_truth.add(t)
            used_detections.add(d)
            pairs.append((t, d))
    return pairs
