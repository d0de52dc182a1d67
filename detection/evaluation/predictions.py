"""Per-image detections as evaluation takes them, and the merge of shards evaluated on different ranks."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from detection.data.annotations import ImageAnnotation

# one image's detections, as detectors return them: {"boxes": (N, 4) XYXY in the image's original pixels,
# "scores": (N,), "labels": (N,) in 1..K}; torch tensors or numpy arrays
Prediction = Mapping[str, Any]


class EvaluationDataset(Protocol):
    """What evaluation reads from a dataset (DetectionDataset, ConcatDetection, or a hand-made one)."""

    annotations: Sequence[ImageAnnotation]
    class_names: Sequence[str]
    category_ids: Sequence[int]


def merge_predictions(shards: Iterable[Mapping[int, Prediction]]) -> dict[int, dict[str, np.ndarray]]:
    """Merge {image_id: prediction} dicts gathered from every rank into one, ordered by image id.

    DistributedSampler pads the last shard by repeating images, so an id can arrive twice; the first
    copy is kept. The engine does the torch.distributed gather; this only merges what it gathered.
    """
    merged: dict[int, dict[str, np.ndarray]] = {}
    for shard in shards:
        for image_id, prediction in shard.items():
            if image_id not in merged:
                merged[image_id] = as_arrays(prediction, image_id=image_id)
    return dict(sorted(merged.items()))


def as_arrays(prediction: Prediction, *, image_id: int, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Validated numpy copy: boxes float64 (N, 4), scores float64 (N,), labels int64 (N,) in 1..num_classes."""
    try:
        boxes, scores, labels = (_to_numpy(prediction[key]) for key in ("boxes", "scores", "labels"))
    except KeyError as error:
        raise ValueError(f"prediction for image id {image_id}: missing {error} (needs boxes, scores, labels)") from None
    boxes = boxes.astype(np.float64).reshape(-1, 4) if boxes.size == 0 else boxes.astype(np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),) or labels.shape != (len(boxes),):
        raise ValueError(
            f"prediction for image id {image_id}: boxes {boxes.shape}, scores {scores.shape}, labels {labels.shape}; "
            "expected (N, 4), (N,), (N,)"
        )
    if num_classes is not None and len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"prediction for image id {image_id}: labels must be in 1..{num_classes}, got {labels}")
    return {"boxes": boxes, "scores": scores.astype(np.float64), "labels": labels.astype(np.int64)}


def check_image_ids(predictions: Mapping[int, Prediction], image_ids: Iterable[int]) -> None:
    """Every prediction belongs to an evaluated image and every evaluated image has one (maybe empty):
    a shard that went missing would otherwise pass as an image with no detections."""
    expected = set(image_ids)
    unknown = sorted(set(predictions) - expected)
    missing = sorted(expected - set(predictions))
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} image ids not among the evaluated images, e.g. {unknown[:5]}")
    if missing:
        raise ValueError(f"no prediction for {len(missing)} images of the dataset, e.g. image ids {missing[:5]}")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or in bf16, which numpy lacks
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()
    return np.asarray(value)
