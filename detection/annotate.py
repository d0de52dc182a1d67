"""Draw detections (the JSON records of `python -m detection.predict` and the service) onto an image."""

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.utils import draw_bounding_boxes

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990")


def draw_detections(pixels: torch.Tensor, detections: Sequence[dict[str, Any]]) -> torch.Tensor:
    """uint8 [3, H, W] with each detection's box, name and score drawn; boxes are in pixels of `pixels`.

    Colours are stable per class (label modulo the palette); lines thicken with the image size.
    """
    if not detections:
        return pixels
    boxes = torch.tensor([detection["box"] for detection in detections], dtype=torch.float32)
    return draw_bounding_boxes(
        pixels,
        boxes,
        labels=[f"{detection['name']} {detection['score']:.2f}" for detection in detections],
        colors=[PALETTE[detection["label"] % len(PALETTE)] for detection in detections],
        width=max(2, min(pixels.shape[-2:]) // 200),
    )
