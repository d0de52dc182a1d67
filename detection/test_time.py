"""Test-time options of the detector: augmentation, refinement, voting and tiles, one call applies them.

Test-time augmentation: each image at several test sizes, optionally mirrored, merged by NMS + box voting.

Beyond the paper (as detectron2's TEST.AUG and mmdetection's --tta): every variant runs through the
detector's own forward (its resize rule at that size), its boxes come back in source pixels (mirrored
back for the flipped variant), and the pooled detections of all variants are merged per class by NMS
at the model's IoU threshold and box voting (detection/box_voting.py). `TestTimeOptions` holds every
rung of the test-time ladder (detection/test_time_options.py); its defaults are the baseline.
"""

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from detection.box_voting import VOTE_IOU_THRESHOLD, merge_detections
from detection.detector import Detector
from detection.slicing import detect_sliced_batch
from detection.test_time_options import TestTimeOptions

__all__ = ["TestTimeOptions", "detect_augmented", "detect_with_options", "mirror_boxes"]


def detect_with_options(
    model: Detector,
    images: list[torch.Tensor],
    options: TestTimeOptions,
    *,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Detections of float images [3, H, W] in their own pixels, with the ladder's options applied."""
    if options.tile_size:
        untiled = replace(options, tile_size=0, tile_full_image=False)
        return detect_sliced_batch(
            lambda tiles: detect_with_options(
                model, tiles, untiled, score_threshold=score_threshold, max_detections=max_detections,
                iou_threshold=iou_threshold,
            ),
            images, tile_size=options.tile_size, overlap=options.overlap, full_image=options.tile_full_image,
            max_detections=model.roi_heads.detections_per_img if max_detections is None else max_detections,
        )  # fmt: skip
    if not options.augmented:
        _, detections = model(
            images, score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold,
            vote_threshold=options.vote, refine_boxes=options.refine_boxes,
            maxout_sizes=options.maxout_sizes,
        )  # fmt: skip
        return detections
    return detect_augmented(
        model, images, flip=options.test_flip, test_sizes=options.test_sizes,
        vote_threshold=options.vote or VOTE_IOU_THRESHOLD,
        score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold,
        refine_boxes=options.refine_boxes, maxout_sizes=options.maxout_sizes,
    )  # fmt: skip


def detect_augmented(
    model: Detector,
    images: list[torch.Tensor],
    *,
    flip: bool,
    test_sizes: Sequence[int],
    vote_threshold: float | None = VOTE_IOU_THRESHOLD,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
    **forward_kwargs: Any,
) -> list[dict[str, torch.Tensor]]:
    """Run every (test size, mirrored or not) variant of `images` and merge each image's detections.

    test_sizes: shorter sides (empty: the model's own); the merge's NMS runs at iou_threshold (None: the
    model's box_nms_thresh) and keeps max_detections (None: the model's); forward_kwargs go to the model.
    """
    sizes: list[int | None] = list(test_sizes) or [None]
    mirrors = (False, True) if flip else (False,)
    kwargs = dict(score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold)
    pooled: list[list[dict[str, torch.Tensor]]] = [[] for _ in images]
    for size in sizes:
        for mirrored in mirrors:
            inputs = [image.flip(-1) for image in images] if mirrored else images
            _, detections = model(inputs, test_size=size, **kwargs, **forward_kwargs)
            for index, (image, detection) in enumerate(zip(images, detections)):
                if mirrored:
                    detection = {**detection, "boxes": mirror_boxes(detection["boxes"], width=image.shape[-1])}
                pooled[index].append(detection)
    nms_threshold = model.roi_heads.nms_thresh if iou_threshold is None else iou_threshold
    limit = model.roi_heads.detections_per_img if max_detections is None else max_detections
    return [
        merge_detections(
            *(torch.cat([d[key] for d in variants]) for key in ("boxes", "scores", "labels")),
            nms_threshold=nms_threshold,
            vote_threshold=vote_threshold,
            max_detections=limit,
        )  # fmt: skip
        for variants in pooled
    ]


def mirror_boxes(boxes: torch.Tensor, *, width: int) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) of a left-right mirrored image of this width, in the unmirrored image."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
