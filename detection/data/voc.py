"""Pascal VOC detection data in its real layout: Annotations/*.xml, ImageSets/Main/<split>.txt, JPEGImages/.

A custom VOC-layout dataset names its classes in classes.txt, one name per line in label order, so a
name may hold spaces (COCO's "dining table"); `read_class_names` reads that file wherever one is taken.
"""

import math
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detection.data.annotations import AnnotationError, ImageAnnotation
from detection.data.dataset import DetectionDataset

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line, label order (label 1 first); blank lines are skipped, spaces inside kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise AnnotationError(f"{path}: no class names (one name per line, in label order)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AnnotationError(f"{path}: class names listed twice: {', '.join(map(repr, repeated))}")
    return names


class VocDetection(DetectionDataset):
    """One VOC split (e.g. VOC2007 `test`, VOC2012 `trainval`); `class_names` in label order 1..K.

    `difficult` objects are flagged `ignore`: out of training, ignored by VOC evaluation. Image ids are
    positions in the split file; `annotations[i].file_name` keeps the VOC name. Every XML is parsed up
    front, so a bad file stops construction instead of a training run hours later.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        class_names: Sequence[str] = VOC_CLASSES,
        transforms: Callable[..., Any] | None = None,
        keep_empty: bool = True,
    ) -> None:
        root = Path(root)
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise AnnotationError(
                f"{split_file}: split file not found "
                "(VOC layout: Annotations/, ImageSets/Main/<split>.txt, JPEGImages/)"
            )
        label_of = {name: label for label, name in enumerate(class_names, start=1)}
        self.num_degenerate_boxes = 0
        annotations = []
        for line_number, line in enumerate(split_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1:
                raise AnnotationError(f"{split_file}: line {line_number}: expected one image name, got {line!r}")
            annotation, degenerate = parse_voc_xml(
                root / "Annotations" / f"{fields[0]}.xml", image_id=len(annotations), label_of=label_of
            )
            annotations.append(annotation)
            self.num_degenerate_boxes += degenerate
        self.root = root
        self.split = split
        super().__init__(
            annotations,
            image_dir=root / "JPEGImages",
            class_names=class_names,
            category_ids=range(1, len(class_names) + 1),
            transforms=transforms,
            keep_empty=keep_empty,
        )


def parse_voc_xml(path: Path, *, image_id: int, label_of: dict[str, int]) -> tuple[ImageAnnotation, int]:
    """Parse one VOC annotation; returns it and how many boxes were dropped as degenerate."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise AnnotationError(f"{path}: not valid XML: {error}") from error
    width, height = _number(root, "size/width", f"{path}"), _number(root, "size/height", f"{path}")
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise AnnotationError(f"{path}: size must be positive integers, got {width}x{height}")
    boxes, labels, difficult, degenerate = [], [], [], 0
    for index, obj in enumerate(root.findall("object")):
        where = f"{path}: object #{index}"
        name = (obj.findtext("name") or "").strip()
        if name not in label_of:
            raise AnnotationError(f"{where}: unknown class name {name!r}; known: {', '.join(label_of)}")
        flag = (obj.findtext("difficult") or "0").strip()  # absent in some VOC2012 files: not difficult
        if flag not in ("0", "1"):
            raise AnnotationError(f"{where}: difficult must be 0 or 1, got {flag!r}")
        if obj.find("bndbox") is None:
            raise AnnotationError(f"{where}: no bndbox")
        xmin, ymin, xmax, ymax = (_number(obj, f"bndbox/{key}", where) for key in ("xmin", "ymin", "xmax", "ymax"))
        # VOC stores 1-based inclusive pixel indices: (1, W) spans the whole image, i.e. [0, W] in pixel
        # coordinates (as detectron2 reads it). IoU on these boxes equals the devkit's "+1" IoU.
        x1, y1 = min(max(xmin - 1, 0.0), width), min(max(ymin - 1, 0.0), height)
        x2, y2 = min(max(xmax, 0.0), width), min(max(ymax, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            degenerate += 1
            continue
        boxes.append((x1, y1, x2, y2))
        labels.append(label_of[name])
        difficult.append(flag == "1")
    annotation = ImageAnnotation(
        image_id=image_id,
        file_name=f"{path.stem}.jpg",
        height=int(height),
        width=int(width),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        ignore=np.array(difficult, dtype=bool),
    )
    return annotation, degenerate


def _number(element: ElementTree.Element, tag: str, where: str) -> float:
    text = element.findtext(tag)
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: <{tag}> must be a number, got {text!r}")
    return value
