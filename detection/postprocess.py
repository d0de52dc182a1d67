"""Stage 4: detections from the resized, padded batch back to each original image's pixels."""

import torch
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import clip_boxes_to_image


def to_original_coordinates(
    detections: list[dict[str, torch.Tensor]],
    resized_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
) -> list[dict[str, torch.Tensor]]:
    """Scale x by original_width / resized_width and y likewise (torchvision's arithmetic, so boxes
    match its models), then clip to the image: the float ratio can overshoot the border by ~1e-5 px.
    Padding needs no correction: it is only added right and below."""
    return [
        {**detection, "boxes": clip_boxes_to_image(resize_boxes(detection["boxes"], resized, original), original)}
        for detection, resized, original in zip(detections, resized_sizes, original_sizes)
    ]
