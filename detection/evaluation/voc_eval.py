"""Pascal VOC box AP, written here: the VOC2007 11-point AP and the VOC2010+ area ("all points") AP.

Follows the devkit (and py-faster-rcnn's voc_eval.py): per class, detections in descending score; a
detection is a true positive when its best-overlapping ground truth has IoU > threshold, is not
`difficult` and is not taken yet; the best one being taken makes it a false positive; the best one
being `difficult` makes it count neither way. Classes without ground truth get nan and stay out of the mean.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from detection.evaluation.predictions import EvaluationDataset, Prediction, as_arrays, check_image_ids

VOC_AP_METHODS = ("11point", "area")


@dataclass
class VocMetrics:
    """mAP and per-class AP for each requested method, and each class's precision-recall curve."""

    iou_threshold: float
    mean_ap: dict[str, float]  # method -> mean over classes with ground truth
    per_class_ap: dict[str, dict[str, float]]  # method -> class -> AP
    recall: dict[str, np.ndarray] = field(repr=False)  # class -> recall after each detection, by score
    precision: dict[str, np.ndarray] = field(repr=False)

    def as_dict(self) -> dict:
        """JSON-ready."""
        return {"iou_threshold": self.iou_threshold, "mean_ap": self.mean_ap, "per_class_ap": self.per_class_ap}

    def format_table(self) -> str:
        """Per-class AP under every method, then the means, as printed lines."""
        methods = list(self.mean_ap)
        width = max(len(name) for name in [*next(iter(self.per_class_ap.values())), "mean"])
        header = f"{'class':<{width}}  " + "  ".join(f"{'AP ' + method:>10}" for method in methods)
        lines = [f"VOC AP at IoU > {self.iou_threshold}", header]
        for name in next(iter(self.per_class_ap.values())):
            values = "  ".join(f"{self.per_class_ap[method][name]:>10.4f}" for method in methods)
            lines.append(f"{name:<{width}}  {values}")
        lines.append(f"{'mean':<{width}}  " + "  ".join(f"{self.mean_ap[method]:>10.4f}" for method in methods))
        return "\n".join(lines)


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, method: str) -> float:
    """AP from a precision-recall curve (detections in score order).

    "11point" (VOC2007): mean over recall levels t = 0, 0.1, ..., 1 of the best precision at recall >= t.
    "area" (VOC2010+): area under the curve after making precision monotonically non-increasing.
    """
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if method == "11point":
        # k / 10, not the devkit's arange(0, 1.1, 0.1) (nor linspace): their 0.30000000000000004 misses a recall of 3/10
        levels = np.arange(11) / 10
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in levels]))
    if method == "area":
        recall = np.concatenate(([0.0], recall, [1.0]))
        precision = np.concatenate(([0.0], precision, [0.0]))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision to the right
        steps = np.flatnonzero(recall[1:] != recall[:-1])
        return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))
    raise ValueError(f"unknown VOC AP method {method!r}; known: {', '.join(VOC_AP_METHODS)}")


def evaluate_voc(
    dataset: EvaluationDataset,
    predictions: Mapping[int, Prediction],
    *,
    methods: Sequence[str] = VOC_AP_METHODS,
    iou_threshold: float = 0.5,
    image_ids: Sequence[int] | None = None,
) -> VocMetrics:
    """VOC AP of `predictions` ({image_id: prediction}, every evaluated image present) over the dataset's
    images or `image_ids`; both methods by default, so nobody mistakes one for the other."""
    for method in methods:
        if method not in VOC_AP_METHODS:
            raise ValueError(f"unknown VOC AP method {method!r}; known: {', '.join(VOC_AP_METHODS)}")
    wanted = None if image_ids is None else set(image_ids)
    evaluated = [a for a in dataset.annotations if wanted is None or a.image_id in wanted]
    check_image_ids(predictions, [a.image_id for a in evaluated])
    detections = _concatenate(predictions, num_classes=len(dataset.class_names))
    per_class_ap: dict[str, dict[str, float]] = {method: {} for method in methods}
    recalls, precisions = {}, {}
    for label, name in enumerate(dataset.class_names, start=1):
        recall, precision = _class_curve(evaluated, detections, label=label, iou_threshold=iou_threshold)
        recalls[name], precisions[name] = recall, precision
        for method in methods:
            per_class_ap[method][name] = float("nan") if recall is None else voc_ap(recall, precision, method=method)
    mean_ap = {method: _nanmean(list(per_class_ap[method].values())) for method in methods}
    return VocMetrics(
        iou_threshold=iou_threshold, mean_ap=mean_ap, per_class_ap=per_class_ap, recall=recalls, precision=precisions
    )


def _concatenate(predictions: Mapping[int, Prediction], *, num_classes: int) -> dict[str, np.ndarray]:
    """All detections in flat arrays, images in id order (which is the order score ties keep)."""
    arrays = [(i, as_arrays(predictions[i], image_id=i, num_classes=num_classes)) for i in sorted(predictions)]
    return {
        "image_ids": np.concatenate([np.full(len(a["scores"]), i, dtype=np.int64) for i, a in arrays] or [[]]),
        "boxes": np.concatenate([a["boxes"] for _, a in arrays] or [np.zeros((0, 4))]),
        "scores": np.concatenate([a["scores"] for _, a in arrays] or [[]]),
        "labels": np.concatenate([a["labels"] for _, a in arrays] or [[]]),
    }


def _class_curve(annotations, detections, *, label: int, iou_threshold: float):
    """Recall and precision after each counted detection of one class; (None, None) without ground truth."""
    ground_truth, num_positives = {}, 0
    for annotation in annotations:
        of_class = annotation.labels == label
        boxes, ignore = annotation.boxes[of_class].astype(np.float64), annotation.ignore[of_class]
        ground_truth[annotation.image_id] = (boxes, ignore, np.zeros(len(boxes), dtype=bool))
        num_positives += int((~ignore).sum())
    if num_positives == 0:
        return None, None
    selected = np.flatnonzero(detections["labels"] == label)
    selected = selected[np.argsort(-detections["scores"][selected], kind="stable")]
    outcomes = []  # True: true positive, False: false positive; detections on difficult objects are left out
    for image_id, box in zip(detections["image_ids"][selected].tolist(), detections["boxes"][selected]):
        boxes, ignore, taken = ground_truth[image_id]
        overlaps = box_iou(box[None], boxes)[0]
        best = int(overlaps.argmax()) if len(overlaps) else -1
        if best < 0 or overlaps[best] <= iou_threshold:
            outcomes.append(False)
        elif ignore[best]:
            continue  # the devkit counts it neither way: leaving it out gives the same curve points
        elif taken[best]:
            outcomes.append(False)
        else:
            taken[best] = True
            outcomes.append(True)
    true_positives = np.cumsum(outcomes, dtype=np.float64)
    counted = np.arange(1, len(outcomes) + 1, dtype=np.float64)
    return true_positives / num_positives, true_positives / counted


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of XYXY boxes a [N, 4] and b [M, 4]; continuous coordinates: VOC's 1-based inclusive boxes
    were converted on load, so no devkit "+1"."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return intersection / (area_a[:, None] + area_b[None, :] - intersection)


def _nanmean(values: list[float]) -> float:
    valid = [value for value in values if not np.isnan(value)]
    return float(np.mean(valid)) if valid else float("nan")
