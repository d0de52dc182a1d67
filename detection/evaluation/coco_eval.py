"""COCO box metrics through pycocotools: the 12-number summary, per-class AP, results files.

Works on a real COCO json (a CocoDetection's own pycocotools index) and on any other dataset (VOC,
synthetic), whose annotations are turned into an in-memory COCO object first.
"""

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.data.annotations import ImageAnnotation
from detection.evaluation.predictions import EvaluationDataset, Prediction, as_arrays, check_image_ids

# the order of COCOeval.stats, i.e. of the lines of its printed summary
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoMetrics:
    """The 12 summary numbers by name (-1 where pycocotools has nothing to measure, as it prints them),
    per-class AP@[.5:.95] and AP@.5 (nan for a class without ground truth), and the printed summary."""

    stats: dict[str, float]
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    summary: str
    # precision at the 101 recall points of COCOeval (recall_thresholds), IoU 0.5, all areas, 100 dets
    precision_at_50: dict[str, np.ndarray] = field(repr=False)
    recall_thresholds: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        """JSON-ready: the 12 numbers by name and the per-class APs."""
        return {"stats": self.stats, "per_class_ap": self.per_class_ap, "per_class_ap50": self.per_class_ap50}


def coco_from_annotations(
    annotations: Sequence[ImageAnnotation], *, class_names: Sequence[str], category_ids: Sequence[int]
) -> COCO:
    """A pycocotools ground truth built from parsed annotations (VOC, synthetic, concatenations).

    Ignored boxes (VOC `difficult`) become crowd regions, the only kind of ignored ground truth
    pycocotools has: detections on them count neither way. `area` is the box area (there are no masks).
    """
    images, entries = [], []
    for annotation in annotations:
        images.append(
            {
                "id": annotation.image_id,
                "file_name": annotation.file_name,
                "height": annotation.height,
                "width": annotation.width,
            }
        )
        for box, label, ignore in zip(
            annotation.boxes.tolist(), annotation.labels.tolist(), annotation.ignore.tolist()
        ):
            x1, y1, x2, y2 = box
            entries.append({
                "id": len(entries) + 1,  # pycocotools reads a matched gt id of 0 as "unmatched"
                "image_id": annotation.image_id,
                "category_id": category_ids[label - 1],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(ignore),
            })  # fmt: skip
    categories = [{"id": category_id, "name": name} for category_id, name in zip(category_ids, class_names)]
    return _coco_index({"images": images, "annotations": entries, "categories": categories})


def coco_ground_truth(dataset: EvaluationDataset) -> COCO:
    """The dataset's own pycocotools index when it has one (real COCO: segment areas, crowds), else built."""
    coco = getattr(dataset, "coco", None)
    if coco is not None:
        return coco
    return coco_from_annotations(
        dataset.annotations, class_names=dataset.class_names, category_ids=dataset.category_ids
    )


def to_coco_results(predictions: Mapping[int, Prediction], *, category_ids: Sequence[int]) -> list[dict]:
    """Detections in COCO results format ([x, y, w, h], original category ids), ready for json.dump."""
    results = []
    for image_id, prediction in predictions.items():
        arrays = as_arrays(prediction, image_id=image_id, num_classes=len(category_ids))
        for box, score, label in zip(arrays["boxes"].tolist(), arrays["scores"].tolist(), arrays["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append({
                "image_id": int(image_id),  # numpy or tensor ids would not serialise
                "category_id": int(category_ids[label - 1]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
            })  # fmt: skip
    return results


def evaluate_coco(
    dataset: EvaluationDataset,
    predictions: Mapping[int, Prediction],
    *,
    image_ids: Sequence[int] | None = None,
    verbose: bool = True,
) -> CocoMetrics:
    """COCO box metrics of `predictions` ({image_id: prediction}, every evaluated image present, possibly
    with no boxes) over the dataset's images, or over `image_ids`. verbose prints the 12-line summary."""
    image_ids = [a.image_id for a in dataset.annotations] if image_ids is None else list(image_ids)
    check_image_ids(predictions, image_ids)
    coco_gt = coco_ground_truth(dataset)
    results = to_coco_results(predictions, category_ids=dataset.category_ids)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress chatter
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if verbose:
        print(summary.getvalue(), end="")
    precision = evaluator.eval["precision"]  # [IoU threshold, recall point, category, area range, max dets]
    names = dict(zip(dataset.category_ids, dataset.class_names))
    class_names = [names[category_id] for category_id in evaluator.params.catIds]
    return CocoMetrics(
        stats=dict(zip(COCO_METRIC_NAMES, (float(value) for value in evaluator.stats))),
        per_class_ap={name: _mean_valid(precision[:, :, k, 0, -1]) for k, name in enumerate(class_names)},
        per_class_ap50={name: _mean_valid(precision[0, :, k, 0, -1]) for k, name in enumerate(class_names)},
        summary=summary.getvalue(),
        precision_at_50={name: precision[0, :, k, 0, -1].copy() for k, name in enumerate(class_names)},
        recall_thresholds=np.asarray(evaluator.params.recThrs),
    )


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]  # -1: no ground truth of this class
    return float(valid.mean()) if valid.size else float("nan")


def _empty_results(coco_gt: COCO) -> COCO:
    # loadRes cannot take an empty list (it reads the first entry); no detections is a valid result
    return _coco_index(
        {"images": coco_gt.dataset["images"], "annotations": [], "categories": coco_gt.dataset["categories"]}
    )


def _coco_index(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
