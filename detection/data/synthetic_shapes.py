"""Synthetic shapes for the quickstart, the demo model and the tests, written in COCO and VOC layouts.

Each image holds 1 to `max_objects` non-overlapping shapes (circle, square, triangle, star) in saturated
random colours on a muted texture (smooth blotches, stripes, grain), sides 15-40% of the image: clean
enough for a small detector trained from scratch on a CPU. The same seed writes the same bytes.
"""

import colorsys
import io
import json
import math
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle", "star")
_SPLIT_CODES = {"train": 0, "val": 1}  # part of each image's seed, so splits never share images
_JPEG_QUALITY = 95  # with 4:4:4 chroma (subsampling=0): shape edges stay sharp in colour too
_MIN_SIDE, _MAX_SIDE = 0.15, 0.40  # object size as a fraction of the image side
_GAP = 4  # pixels kept free between objects: no occlusion


@dataclass(frozen=True)
class SyntheticLayout:
    """Where a generated dataset lies: `coco/` (annotations/instances_<split>.json, <split>/) and `voc/`."""

    root: Path

    def coco_annotation_file(self, split: str) -> Path:
        return self.root / "coco" / "annotations" / f"instances_{split}.json"

    def coco_image_dir(self, split: str) -> Path:
        return self.root / "coco" / split

    @property
    def voc_root(self) -> Path:
        return self.root / "voc"


@dataclass(frozen=True)
class SyntheticObject:
    class_index: int  # 0-based index into SHAPE_CLASSES
    box: tuple[int, int, int, int]  # x1 y1 x2 y2 in pixel coordinates (x2, y2 exclusive), tight around the shape


def render_image(
    rng: np.random.Generator, *, image_size: int, max_objects: int
) -> tuple[Image.Image, list[SyntheticObject]]:
    """One RGB image and its objects."""
    image = Image.fromarray(_texture(rng, image_size))
    objects: list[SyntheticObject] = []
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(50):
            side = int(rng.integers(round(_MIN_SIDE * image_size), round(_MAX_SIDE * image_size) + 1))
            x, y = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
            region = (x, y, x + side, y + side)
            if not any(_overlaps(region, other, gap=_GAP) for other in placed):
                break
        else:
            continue  # the image is full: fewer objects rather than occlusion
        class_index = int(rng.integers(len(SHAPE_CLASSES)))
        mask = Image.new("L", image.size, 0)
        _draw_shape(ImageDraw.Draw(mask), SHAPE_CLASSES[class_index], region, angle=float(rng.uniform(0, 2 * math.pi)))
        image.paste(_shape_colour(rng), mask=mask)
        placed.append(region)
        objects.append(SyntheticObject(class_index=class_index, box=mask.getbbox()))
    return image, objects


def generate_synthetic(
    out_dir: str | os.PathLike,
    *,
    num_train: int,
    num_val: int,
    image_size: int = 192,
    seed: int = 0,
    max_objects: int = 4,
) -> SyntheticLayout:
    """Write both layouts under out_dir and return where they are."""
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    layout = SyntheticLayout(root=Path(out_dir))
    voc = layout.voc_root
    for folder in (
        voc / "JPEGImages",
        voc / "Annotations",
        voc / "ImageSets" / "Main",
        layout.root / "coco" / "annotations",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    (voc / "classes.txt").write_text("".join(f"{name}\n" for name in SHAPE_CLASSES))
    for split, count in (("train", num_train), ("val", num_val)):
        layout.coco_image_dir(split).mkdir(parents=True, exist_ok=True)
        coco = {
            "info": {"description": f"resdet synthetic shapes, {split}, seed {seed}"},
            "images": [],
            "annotations": [],
            "categories": [
                {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)
            ],
        }
        names = []
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
            image, objects = render_image(rng, image_size=image_size, max_objects=max_objects)
            name = f"{split}_{index:06d}"
            encoded = io.BytesIO()
            image.save(encoded, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)
            for path in (layout.coco_image_dir(split) / f"{name}.jpg", voc / "JPEGImages" / f"{name}.jpg"):
                path.write_bytes(encoded.getvalue())
            coco["images"].append(
                {"id": index + 1, "file_name": f"{name}.jpg", "height": image_size, "width": image_size}
            )
            for obj in objects:
                x1, y1, x2, y2 = obj.box
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1,
                    "image_id": index + 1,
                    "category_id": obj.class_index + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),  # box area: no masks are written
                    "iscrowd": 0,
                })  # fmt: skip
            _write_voc_xml(voc / "Annotations" / f"{name}.xml", name=name, image_size=image_size, objects=objects)
            names.append(name)
        layout.coco_annotation_file(split).write_text(json.dumps(coco))
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
    return layout


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted background: a greyish base colour, smooth blotches, faint stripes and grain."""
    base = rng.uniform(90, 170) + rng.uniform(-15, 15, size=3)
    blotches = _upsample(rng.uniform(-30, 30, size=(6, 6)), size)[..., None]
    tint = np.stack([_upsample(rng.uniform(-10, 10, size=(6, 6)), size) for _ in range(3)], axis=-1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
    stripes = rng.uniform(0, 12) * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    grain = rng.normal(0, 4, size=(size, size, 3))
    pixels = base + blotches + tint + stripes[..., None] + grain
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))


def _shape_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))
    # half of the shapes dark, half bright, so that brightness alone never separates shape from background
    scale = 255 if rng.uniform() < 0.5 else 110
    return int(red * scale), int(green * scale), int(blue * scale)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, region: tuple[int, int, int, int], *, angle: float) -> None:
    x1, y1, x2, y2 = region
    if shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=255)
    elif shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=255)
    else:
        centre_x, centre_y, radius = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2, (x2 - x1 - 1) / 2
        if shape == "triangle":
            radii, corners = [radius], 3
        else:  # five-pointed star: outer and inner corners alternate
            radii, corners = [radius, 0.45 * radius], 10
        points = [
            (
                centre_x + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / corners),
                centre_y + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / corners),
            )
            for k in range(corners)
        ]
        draw.polygon(points, fill=255)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], *, gap: int) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _write_voc_xml(path: Path, *, name: str, image_size: int, objects: list[SyntheticObject]) -> None:
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "synthetic"
    ElementTree.SubElement(root, "filename").text = f"{name}.jpg"
    size = ElementTree.SubElement(root, "size")
    for tag, value in (("width", image_size), ("height", image_size), ("depth", 3)):
        ElementTree.SubElement(size, tag).text = str(value)
    for obj in objects:
        element = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(element, "name").text = SHAPE_CLASSES[obj.class_index]
        ElementTree.SubElement(element, "difficult").text = "0"
        box = ElementTree.SubElement(element, "bndbox")
        x1, y1, x2, y2 = obj.box
        # VOC's 1-based inclusive pixel indices: pixels x1..x2-1 are columns x1+1..x2
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ElementTree.SubElement(box, tag).text = str(value)
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)
