"""The per-request options of the detection routes: which classes to keep, and how boxes are written."""

from collections.abc import Sequence
from typing import Literal

from fastapi import HTTPException

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
BOX_FORMATS: dict[str, str] = {
    "xyxy": "[x1, y1, x2, y2]: left, top, right, bottom (the default; Pascal VOC, torchvision)",
    "xywh": "[x, y, width, height]: left, top and size (COCO)",
    "cxcywh": "[cx, cy, width, height]: centre and size (YOLO, DETR)",
}


def _label_id(token: str, *, count: int) -> int | None:
    """The label id `token` spells in ASCII digits, if it is one of 1..count. `str.isdigit` also accepts `¹`
    and `٣` (which `int` refuses or reads) and `int` refuses over 4,300 digits; no label needs 10 digits."""
    if not (token.isascii() and token.isdecimal()) or len(token) > 9:
        return None
    label = int(token)
    return label if 1 <= label <= count else None


def _shortened(token: str, limit: int = 40) -> str:
    """A client's token as an error quotes it: a 4,000-character one is not echoed whole."""
    return token if len(token) <= limit else f"{token[:limit]}... ({len(token)} characters)"


def parse_classes(values: Sequence[str] | None, *, class_names: Sequence[str]) -> frozenset[int] | None:
    """Labels (1..K) from names or label ids, repeated or comma-separated; None keeps every class.

    A value that is neither a class name nor a label id is a 422 listing the model's classes.
    """
    if not values:
        return None
    labels: set[int] = set()
    unknown: list[str] = []
    label_of = {name: label for label, name in enumerate(class_names, start=1)}
    for token in (part.strip() for value in values for part in value.split(",")):
        if not token:
            continue
        if token in label_of:  # a name first: a class may be called "1"
            labels.add(label_of[token])
        elif (label := _label_id(token, count=len(class_names))) is not None:
            labels.add(label)
        else:
            unknown.append(token)
    if unknown:
        listed = ", ".join(f"{label}={name!r}" for label, name in enumerate(class_names, start=1))
        raise HTTPException(
            422,
            f"classes: unknown class {', '.join(repr(_shortened(token)) for token in unknown)}; "
            f"this model's classes (label=name) are: {listed}",
        )
    if not labels:
        raise HTTPException(422, "classes: no class given (omit the parameter to keep every class)")
    return frozenset(labels)


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
