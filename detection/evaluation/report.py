"""Writing evaluation output: metrics and COCO results files as JSON, and the report users read: AP per
class and by object size, a confusion matrix (JSON, PNG), the images with the most errors (contact sheet),
and the same as terminal tables."""

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from backbone.files import write_atomically
from detection.annotate import draw_on_image
from detection.data.annotations import ImageAnnotation
from detection.evaluation.coco_eval import CocoMetrics
from detection.evaluation.confusion import ConfusionMatrix, confusion_and_errors
from detection.evaluation.predictions import EvaluationDataset


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write atomically (`backbone.files.write_atomically`); nan becomes null, which strict JSON readers accept."""
    text = json.dumps(_nan_to_none(data), indent=1, allow_nan=False)
    return write_atomically(path, lambda temporary: temporary.write_text(text))


def _nan_to_none(data: Any) -> Any:
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {key: _nan_to_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nan_to_none(value) for value in data]
    return data


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table for the terminal: first column left-aligned, numbers to 3 decimals, nan as '-'."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h)) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) or value < 0 else f"{value:.3f}"
    return str(value)


def format_coco_report(coco: CocoMetrics) -> str:
    """AP per class (AP@[.5:.95] and AP@.5) and the size breakdown, as terminal tables."""
    rows = [(name, coco.per_class_ap[name], coco.per_class_ap50[name]) for name in coco.per_class_ap]
    rows.append(("all classes", coco.stats["AP"], coco.stats["AP50"]))
    sizes = [
        ("small (< 32² px)", coco.stats["APs"]),
        ("medium", coco.stats["APm"]),
        ("large (> 96² px)", coco.stats["APl"]),
    ]
    return (
        format_table(("class", "AP@[.5:.95]", "AP@.5"), rows)
        + "\n\n"
        + format_table(("object size", "AP@[.5:.95]"), sizes)
    )


def format_confusion(matrix: ConfusionMatrix) -> str:
    """The confusion matrix as a terminal table (rows: ground truth, columns: prediction)."""
    labels = matrix.labels
    rows = [(f"true {label}", *counts) for label, counts in zip(labels, matrix.counts.tolist())]
    title = (
        f"confusion at score >= {matrix.score_threshold:g}, IoU >= {matrix.iou_threshold:g} "
        "(rows: ground truth, columns: prediction)"
    )
    return title + "\n" + format_table(("", *labels), rows)


def confusion_image(matrix: ConfusionMatrix, *, cell: int = 64) -> Image.Image:
    """The confusion matrix as a heat map: each row shaded by its share of the row's total, counts written in."""
    labels = matrix.labels
    font = ImageFont.load_default(size=max(10, cell // 5))
    margin = max(cell * 2, 8 * max(len(label) for label in labels) + 20)
    size = len(labels)
    image = Image.new("RGB", (margin + size * cell + 10, margin + size * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    totals = matrix.counts.sum(axis=1, keepdims=True).clip(min=1)
    shares = matrix.counts / totals
    for row in range(size):
        for column in range(size):
            x, y = margin + column * cell, margin + row * cell
            shade = round(255 * (1 - shares[row, column]))
            fill = (shade, shade, 255)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill, outline="grey")
            draw.text((x + cell // 2, y + cell // 2), str(matrix.counts[row, column]), font=font, anchor="mm",
                      fill="white" if shade < 128 else "black")  # fmt: skip
    for index, label in enumerate(labels):
        centre = margin + index * cell + cell // 2
        draw.text((margin - 6, centre), label, font=font, anchor="rm", fill="black")
        draw.text((centre, margin - 6), label[: max(3, cell // 6)], font=font, anchor="ms", fill="black")
    draw.text((6, 6), "rows: ground truth, columns: prediction", font=font, fill="black")
    return image


def contact_sheet(tiles: Sequence[tuple[Image.Image, str]], *, columns: int = 4, tile_size: int = 320) -> Image.Image:
    """Images (already annotated) shrunk into a grid of tile_size squares, each with its caption below."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one image")
    caption = 18
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * tile_size, rows * (tile_size + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for index, (image, text) in enumerate(tiles):
        thumbnail = image.copy()
        thumbnail.thumbnail((tile_size, tile_size))
        x, y = (index % columns) * tile_size, (index // columns) * (tile_size + caption)
        sheet.paste(thumbnail, (x + (tile_size - thumbnail.width) // 2, y + (tile_size - thumbnail.height) // 2))
        draw.text((x + 4, y + tile_size + 2), text, font=font, fill="black")
    return sheet


def annotate_errors(
    image: Image.Image, annotation: ImageAnnotation, prediction: Mapping[str, np.ndarray], *,
    class_names: Sequence[str], score_threshold: float,
) -> Image.Image:  # fmt: skip
    """The image with its ground truth (thin black-and-white outlines) and its detections at the threshold
    (class colours with labels, as the predict CLI draws them)."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(1, round(min(image.size) / 300))
    for box in annotation.boxes.tolist():
        draw.rectangle(box, outline="white", width=line + 2)
        draw.rectangle(box, outline="black", width=line)
    records = [
        {"box": box, "label": int(label), "name": class_names[int(label) - 1], "score": float(score)}
        for box, score, label in zip(
            prediction["boxes"].tolist(), prediction["scores"].tolist(), prediction["labels"].tolist()
        )
        if score >= score_threshold
    ]
    return draw_on_image(image, records)


def write_evaluation_report(
    output_dir: str | os.PathLike,
    *,
    dataset: EvaluationDataset,
    predictions: Mapping[int, Mapping[str, np.ndarray]],
    coco: CocoMetrics,
    load_image: Callable[[ImageAnnotation], Image.Image] | None,
    score_threshold: float = 0.5,
    worst: int = 12,
) -> str:
    """Write report.json (AP per class, by object size, confusion matrix), confusion.json, confusion.png and,
    given load_image, worst_images.jpg (the images with the most false positives plus missed objects at
    score_threshold); return the terminal tables."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    matrix, errors = confusion_and_errors(dataset, predictions, score_threshold=score_threshold)
    ranked = sorted(errors, key=lambda e: (-e.total, e.image_id))[:worst]
    ranked = [e for e in ranked if e.total > 0]
    report = {
        "per_class_ap": coco.per_class_ap,
        "per_class_ap50": coco.per_class_ap50,
        "ap_by_size": {"small": coco.stats["APs"], "medium": coco.stats["APm"], "large": coco.stats["APl"]},
        "confusion": matrix.as_dict(),
        "worst_images": [
            {"image_id": e.image_id, "false_positives": e.false_positives, "missed": e.missed} for e in ranked
        ],
    }
    write_json(output_dir / "report.json", report)
    write_json(output_dir / "confusion.json", matrix.as_dict())
    image = confusion_image(matrix)
    write_atomically(output_dir / "confusion.png", lambda temporary: image.save(temporary, format="PNG"))
    if load_image is not None and ranked:
        by_id = {a.image_id: a for a in dataset.annotations}
        tiles = []
        for entry in ranked:
            annotation = by_id[entry.image_id]
            annotated = annotate_errors(
                load_image(annotation), annotation, predictions[entry.image_id],
                class_names=dataset.class_names, score_threshold=score_threshold,
            )  # fmt: skip
            tiles.append((annotated, f"{annotation.file_name}: {entry.false_positives} FP, {entry.missed} missed"))
        sheet = contact_sheet(tiles)
        write_atomically(output_dir / "worst_images.jpg", lambda temporary: sheet.save(temporary, format="JPEG"))
    return format_coco_report(coco) + "\n\n" + format_confusion(matrix)


def dataset_image_loader(dataset: Any) -> Callable[[ImageAnnotation], Image.Image] | None:
    """Opens an annotation's image for datasets that keep their images in one folder (`image_dir`); None
    for the others (the report then has no contact sheet)."""
    image_dir = getattr(dataset, "image_dir", None)
    if image_dir is None:
        return None
    return lambda annotation: Image.open(Path(image_dir) / annotation.file_name)
