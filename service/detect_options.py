"""The per-request options of the detection routes: which classes to keep, and how boxes are written."""

from collections.abc import Sequence
from typing import Literal

from fastapi import HTTPException

from detection.predictor import labels_of

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
BOX_FORMATS: dict[str, str] = {
    "xyxy": "[x1, y1, x2, y2]: left, top, right, bottom (the default; Pascal VOC, torchvision)",
    "xywh": "[x, y, width, height]: left, top and size (COCO)",
    "cxcywh": "[cx, cy, width, height]: centre and size (YOLO, DETR)",
}


def parse_classes(values: Sequence[str] | None, *, class_names: Sequence[str]) -> frozenset[int] | None:
    """Labels (1..K) from names or label ids, repeated or comma-separated; None keeps every class.

    A value that is neither a class name nor a label id is a 422 listing the model's classes.
    """
    if not values:
        return None
    tokens = [part.strip() for value in values for part in value.split(",") if part.strip()]
    try:
        return labels_of(tokens, class_names=class_names)
    except ValueError as error:
        raise HTTPException(422, f"classes: {error}") from None


def convert_box(
    box: Sequence[float], *, box_format: BoxFormat, normalized: bool, width: int, height: int
) -> list[float]:
    """An [x1, y1, x2, y2] box in pixels, written as `box_format`, divided by the image size when `normalized`."""
    x1, y1, x2, y2 = box
    if box_format == "xywh":
        values = [x1, y1, x2 - x1, y2 - y1]
    elif box_format == "cxcywh":
        values = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    else:
        values = [x1, y1, x2, y2]
    if normalized:
        # 6 decimals: a thousandth of a pixel on a 1000-pixel side, as the pixel boxes' 2 decimals.
        return [round(value / size, 6) for value, size in zip(values, (width, height, width, height))]
    return [round(value, 2) for value in values]
