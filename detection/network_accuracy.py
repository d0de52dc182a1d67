"""How well a `Network` (detection/runtimes.py) does on a held-out set, and how far two networks' answers are
apart: COCO AP for detectors, top-1 and logit cosine for classifiers, matched detections between two runs.
Used by `python -m detection.quantize` (its accuracy guard) and bench/runtimes.py (accuracy beside speed)."""

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from backbone.preprocessing import ClassifierPreprocessing
from detection.data.coco import CocoDetection
from detection.decoding import decode_image
from detection.evaluation.coco_eval import evaluate_coco
from detection.predictor import UNCAPPED, Cut, Predictor
from detection.runtimes import Network

DATASET_CACHE_ENV = "RESDET_CACHE"


def image_files(sources: Sequence[str | os.PathLike], *, limit: int | None = None) -> list[Path]:
    """Image files named directly or found under named folders, sorted; `limit` takes evenly spaced ones,
    so a folder of class subfolders gives every class, not the first class's images."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(path for path in source.rglob("*") if path.suffix.lower() in IMG_EXTENSIONS)
        elif source.is_file():
            files.append(source)
        else:
            raise FileNotFoundError(f"{source} does not exist")
    if not files:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {', '.join(map(str, sources))}")
    if limit is not None and len(files) > limit:
        files = [files[int(index)] for index in np.linspace(0, len(files) - 1, limit)]
    return files


def detector_inputs(predictor: Predictor, path: str | os.PathLike) -> tuple[torch.Tensor, ...]:
    """One image as the detector's graph takes it, through the Predictor's own prepare and batch."""
    return predictor.batch([predictor.prepare(path)])


def classifier_inputs(network: Network, path: str | os.PathLike) -> tuple[torch.Tensor, ...]:
    """One image as the classifier takes it: its manifest's crop, normalised, as a batch of one."""
    return (classifier_preprocessing(network).prepare(decode_image(path).to_pil())[None],)


def classifier_preprocessing(network: Network) -> ClassifierPreprocessing:
    stem = network.manifest["architecture_kwargs"].get("stem", "imagenet")
    return ClassifierPreprocessing.from_manifest(network.manifest.get("preprocessing", {}), stem=stem)


@dataclass
class DetectorScore:
    ap: float  # COCO AP@[.5:.95] in points (0-100)
    predictions: dict[int, dict[str, np.ndarray]]


def coco_ap(predictor: Predictor, annotations: str | os.PathLike, images: str | os.PathLike) -> DetectorScore:
    """COCO AP of the predictor's every detection (no cut) on a COCO-format set, one image per forward pass."""
    dataset = CocoDetection(annotations, images)
    everything = Cut(score_threshold=0.0, max_detections=UNCAPPED)
    predictions = {}
    for annotation in dataset.annotations:
        (found,) = predictor.detect([predictor.prepare(dataset.image_dir / annotation.file_name)], [everything])
        predictions[annotation.image_id] = {key: value.numpy() for key, value in found.items()}
    metrics = evaluate_coco(dataset, predictions, verbose=False)
    return DetectorScore(ap=100.0 * metrics.stats["AP"], predictions=predictions)


def matched_fraction(
    reference: dict[int, dict[str, np.ndarray]], other: dict[int, dict[str, np.ndarray]], *, min_score: float = 0.5
) -> float:
    """Of the reference's detections above `min_score`, the fraction that `other` also finds: same class,
    IoU >= 0.5 with one of its detections (greedy, one to one)."""
    found = total = 0
    for image_id, ours in reference.items():
        theirs = other[image_id]
        used = np.zeros(len(theirs["boxes"]), dtype=bool)
        for box, label in zip(ours["boxes"][ours["scores"] >= min_score], ours["labels"][ours["scores"] >= min_score]):
            total += 1
            iou = _iou(box, theirs["boxes"])
            iou[(theirs["labels"] != label) | used] = 0.0
            if iou.size and iou.max() >= 0.5:
                used[iou.argmax()] = True
                found += 1
    return found / total if total else float("nan")


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    intersection = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return intersection / np.maximum(area + areas - intersection, 1e-9)


def labelled_images(
    root: str | os.PathLike, *, class_names: Sequence[str], split: str, limit: int | None = None
) -> list[tuple[Path, int]]:
    """(image, label) of a classification set: `root/<split>/<class>/*` or a .tar/.tar.gz laid out so (as
    ../shared/data/cifar10-jpeg.tar.gz), extracted once into the cache. Labels follow the model's class names;
    `limit` takes evenly spaced images (every class)."""
    from training.classification_data import extract_once, find_split_root

    root = Path(root)
    if root.is_file():
        root = extract_once(root, Path(os.environ.get(DATASET_CACHE_ENV, Path.home() / ".cache" / "resdet")) / "data")
    folder = find_split_root(root, split) / split
    label_of = {name: label for label, name in enumerate(class_names)}
    unknown = sorted({path.name for path in folder.iterdir() if path.is_dir()} - set(label_of))
    if unknown:
        raise ValueError(f"{folder}: class folders {unknown} are not among the model's classes {list(class_names)}")
    return [(path, label_of[path.parent.name]) for path in image_files([folder], limit=limit)]


def crops(network: Network, samples: Sequence[tuple[Path, int]], *, batch_size: int = 64) -> Iterator[tuple]:
    """Batches of (prepared crops [B, 3, S, S], labels [B]) in the classifier's own preprocessing."""
    preprocessing = classifier_preprocessing(network)
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        pixels = torch.stack([preprocessing.prepare(decode_image(path).to_pil()) for path, _ in batch])
        yield pixels, torch.tensor([label for _, label in batch])


def top1(network: Network, samples: Sequence[tuple[Path, int]]) -> float:
    """Top-1 accuracy in points (0-100)."""
    correct = sum(int((network(pixels)[0].argmax(dim=1) == labels).sum()) for pixels, labels in crops(network, samples))
    return 100.0 * correct / len(samples)
