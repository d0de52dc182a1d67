"""Detection evaluation: COCO metrics through pycocotools, VOC 11-point and area AP, sharded results."""

from detection.evaluation.coco_eval import (
    COCO_METRIC_NAMES,
    CocoMetrics,
    coco_from_annotations,
    coco_ground_truth,
    evaluate_coco,
    to_coco_results,
)
from detection.evaluation.predictions import Prediction, merge_predictions
from detection.evaluation.report import write_json
from detection.evaluation.voc_eval import VOC_AP_METHODS, VocMetrics, evaluate_voc, voc_ap

__all__ = [
    "COCO_METRIC_NAMES",
    "VOC_AP_METHODS",
    "CocoMetrics",
    "Prediction",
    "VocMetrics",
    "coco_from_annotations",
    "coco_ground_truth",
    "evaluate_coco",
    "evaluate_voc",
    "merge_predictions",
    "to_coco_results",
    "voc_ap",
    "write_json",
]
