"""Ensembles of detectors at test time (the paper's COCO ensemble, appendix): shared proposals, averaged heads.

The first model's RPN proposes; every model classifies and regresses those same proposals on its own
features; the class probabilities and box deltas are averaged over the models; then the first model's
postprocessing runs (threshold, per-class NMS) followed by box voting. The models must agree on what
these averages mean: the same classes, classifier columns, input transform and box coding.
"""

from collections.abc import Sequence

import torch

from detection.box_voting import VOTE_IOU_THRESHOLD
from detection.detector import Detector
from detection.postprocess import to_original_coordinates
from detection.transform import check_images


def check_compatible(models: Sequence[Detector]) -> None:
    """Raise ValueError naming the first difference that would make averaged head outputs meaningless."""
    if len(models) < 1:
        raise ValueError("an ensemble needs at least one model")
    first = models[0]
    for index, model in enumerate(models[1:], start=1):
        if model.class_names != first.class_names:
            raise ValueError(f"model {index} names other classes than model 0: {model.class_names}")
        if not torch.equal(model.roi_heads.label_to_column.cpu(), first.roi_heads.label_to_column.cpu()):
            raise ValueError(f"model {index} maps labels to other classifier columns than model 0")
        for key in ("min_size", "max_size", "size_divisible", "image_mean", "image_std", "bbox_reg_weights"):
            if tuple(_as_tuple(model.config[key])) != tuple(_as_tuple(first.config[key])):
                raise ValueError(f"model {index} has {key}={model.config[key]}, model 0 {first.config[key]}")


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@torch.no_grad()
def detect_ensemble(
    models: Sequence[Detector],
    images: list[torch.Tensor],
    *,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
    vote_threshold: float | None = VOTE_IOU_THRESHOLD,
) -> list[dict[str, torch.Tensor]]:
    """Detections of float images [3, H, W] in their own pixels by the averaged heads of `models` (eval mode)."""
    check_compatible(models)
    check_images(images)
    first = models[0]
    if any(model.training for model in models):
        raise ValueError("ensemble members must be in eval mode (call .eval())")
    batch, _ = first.transform(images)
    features = first.features(batch.tensors)
    proposals, _ = first.rpn(batch, features)
    probabilities, deltas = [], []
    for index, model in enumerate(models):
        model_features = features if index == 0 else model.features(batch.tensors)
        class_logits, box_regression = model.roi_heads.classify(model_features, proposals, batch.image_sizes)
        probabilities.append(class_logits.softmax(dim=-1))
        deltas.append(box_regression)
    # candidates() applies a softmax: the log of the mean probabilities gives them back exactly
    mean_log_probabilities = torch.stack(probabilities).mean(dim=0).log()
    mean_deltas = torch.stack(deltas).mean(dim=0)
    heads = first.roi_heads
    candidates = heads.candidates(
        mean_log_probabilities, mean_deltas, proposals, batch.image_sizes,
        score_thresh=heads.score_thresh if score_threshold is None else score_threshold,
    )  # fmt: skip
    detections = [
        heads.merge(
            boxes,
            scores,
            columns,
            nms_thresh=heads.nms_thresh if iou_threshold is None else iou_threshold,
            vote_thresh=vote_threshold,
            detections_per_img=heads.detections_per_img if max_detections is None else max_detections,
        )  # fmt: skip
        for boxes, scores, columns in candidates
    ]
    return to_original_coordinates(detections, batch.image_sizes, [tuple(image.shape[-2:]) for image in images])
