"""COCO-format detection data (`instances_*.json` read through pycocotools), for COCO and any custom set."""

import contextlib
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detection.data.annotations import AnnotationError, ImageAnnotation
from detection.data.dataset import DetectionDataset


class CocoDetection(DetectionDataset):
    """A COCO-format dataset: categories sorted by id become labels 1..K, `category_ids` maps back.

    Crowd boxes are flagged `ignore` (out of training, handled by pycocotools in evaluation); boxes with
    no area after xywh->xyxy and clipping to the image are dropped and counted in `num_degenerate_boxes`.
    `coco` is the pycocotools index of the validated file, for evaluation.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        transforms: Callable[..., Any] | None = None,
        keep_empty: bool = True,
    ) -> None:
        path = Path(annotation_file)
        data, images_by_id = _read_validated(path)
        categories = sorted(data["categories"], key=lambda category: category["id"])
        label_of = {category["id"]: label for label, category in enumerate(categories, start=1)}
        boxes_of = defaultdict(list)
        self.num_degenerate_boxes = 0
        for entry in data["annotations"]:
            image = images_by_id[entry["image_id"]]
            x, y, w, h = (float(value) for value in entry["bbox"])
            x1, y1 = min(max(x, 0.0), image["width"]), min(max(y, 0.0), image["height"])
            x2, y2 = min(max(x + w, 0.0), image["width"]), min(max(y + h, 0.0), image["height"])
            if x2 <= x1 or y2 <= y1:
                self.num_degenerate_boxes += 1
                continue
            boxes_of[entry["image_id"]].append(((x1, y1, x2, y2), label_of[entry["category_id"]], entry["iscrowd"]))
        annotations = []
        for image in sorted(data["images"], key=lambda image: image["id"]):
            entries = boxes_of[image["id"]]
            annotations.append(
                ImageAnnotation(
                    image_id=image["id"],
                    file_name=image["file_name"],
                    height=image["height"],
                    width=image["width"],
                    boxes=np.array([box for box, _, _ in entries], dtype=np.float32).reshape(-1, 4),
                    labels=np.array([label for _, label, _ in entries], dtype=np.int64),
                    ignore=np.array([bool(crowd) for _, _, crowd in entries], dtype=bool),
                )
            )
        self.annotation_file = path
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
            self.coco.createIndex()
        super().__init__(
            annotations,
            image_dir=image_dir,
            class_names=[category["name"] for category in categories],
            category_ids=[category["id"] for category in categories],
            transforms=transforms,
            keep_empty=keep_empty,
        )


def _read_validated(path: Path) -> tuple[dict, dict[int, dict]]:
    """Load the JSON and check every entry the loaders and pycocotools rely on, naming the bad one.

    Returns the data (with `iscrowd` and `area` filled in where missing) and its images by id.
    """
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        with path.open() as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path}: missing key {key!r} (a list), as in instances_*.json")
    category_ids = set()
    for index, category in enumerate(data["categories"]):
        where = f"{path}: category #{index}"
        _require(category, ("id", "name"), where)
        if not isinstance(category["id"], int) or category["id"] in category_ids:
            raise AnnotationError(f"{where}: id {category['id']!r} is not an int or is repeated")
        category_ids.add(category["id"])
    images = {}
    for index, image in enumerate(data["images"]):
        where = f"{path}: image #{index}"
        _require(image, ("id", "file_name", "height", "width"), where)
        where = f"{where} (id {image['id']!r})"
        if not isinstance(image["id"], int) or image["id"] in images:
            raise AnnotationError(f"{where}: id is not an int or is repeated")
        if not all(isinstance(image[key], int) and image[key] > 0 for key in ("height", "width")):
            raise AnnotationError(f"{where}: height and width must be positive ints")
        images[image["id"]] = image
    annotation_ids = set()
    for index, entry in enumerate(data["annotations"]):
        where = f"{path}: annotation #{index}"
        _require(entry, ("id", "image_id", "category_id", "bbox"), where)
        where = f"{where} (id {entry['id']!r}, image id {entry['image_id']!r})"
        # pycocotools records a match as the matched gt id and reads 0 as "unmatched": ids must be positive
        if not isinstance(entry["id"], int) or entry["id"] <= 0 or entry["id"] in annotation_ids:
            raise AnnotationError(f"{where}: id must be a positive int, unique in the file")
        annotation_ids.add(entry["id"])
        if entry["image_id"] not in images:
            raise AnnotationError(f"{where}: image id not among the file's images")
        if entry["category_id"] not in category_ids:
            raise AnnotationError(f"{where}: unknown category id {entry['category_id']!r}")
        bbox = entry["bbox"]
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(value, (int, float)) and math.isfinite(value) for value in bbox)
        ):
            raise AnnotationError(f"{where}: bbox must be 4 finite numbers [x, y, width, height], got {bbox!r}")
        entry.setdefault("iscrowd", 0)  # custom files often omit it; pycocotools needs it
        if entry["iscrowd"] not in (0, 1):
            raise AnnotationError(f"{where}: iscrowd must be 0 or 1, got {entry['iscrowd']!r}")
        # pycocotools sorts gt into small/medium/large by `area`; custom files without it get the box area
        entry.setdefault("area", float(bbox[2] * bbox[3]))
    return data, images


def _require(entry: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise AnnotationError(f"{where}: missing key(s) {', '.join(missing)}")
