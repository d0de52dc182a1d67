"""Model adapters for the batching engine: `prepare` one decoded image, `run` a batch of prepared requests.

`prepare` runs in the request's worker thread (in parallel with inference); `run` runs in the engine's
inference thread. Requests in one batch may ask for different thresholds or top-k: the batch is run
once with the loosest, and each request is then cut to its own.
"""

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from backbone import ResNet
from backbone.inference import optimize_for_inference

# Used only when a classifier's manifest does not say how it was trained (ImageNet statistics).
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


class DetectorModel(Protocol):
    """What the service needs from a detector (detection.Detector satisfies it)."""

    transform: GeneralizedRCNNTransform  # its resize rule decides which images can share a forward pass

    def predict(
        self,
        images: list[Image.Image | torch.Tensor],
        score_threshold: float = 0.5,
        max_detections: int = 100,
        *,
        batch_size: int = 4,
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ClassifyRequest:
    pixels: torch.Tensor  # normalised float [3, size, size]
    top_k: int


@dataclass(frozen=True)
class DetectRequest:
    image: torch.Tensor  # uint8 [3, H, W] as displayed
    score_threshold: float
    max_detections: int


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


class ClassifierPredictor:
    """ResNet classifier: resize + centre crop + normalise from the manifest, softmax, top-k."""

    def __init__(
        self,
        model: ResNet,
        *,
        class_names: Sequence[str],
        preprocessing: dict[str, Any],
        device: torch.device,
        optimize: bool,
        bf16: bool,
    ) -> None:
        stem = model.config.get("stem", "imagenet")
        self.size = int(preprocessing.get("size", 32 if stem == "cifar" else 224))
        # Shorter side first, then the centre crop; torchvision's ImageNet evaluation resizes to 256 for 224.
        resize = int(preprocessing.get("resize", self.size if stem == "cifar" else round(self.size * 256 / 224)))
        interpolation = preprocessing.get("interpolation", "bilinear")
        self.transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(resize, interpolation=InterpolationMode(interpolation), antialias=True),
                v2.CenterCrop(self.size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(
                    mean=list(preprocessing.get("mean", DEFAULT_MEAN)), std=list(preprocessing.get("std", DEFAULT_STD))
                ),
            ]
        )
        self.class_names = list(class_names)
        self.device = device
        self.bf16 = bf16
        model = model.to(device).eval()
        self.channels_last = optimize
        self.model = optimize_for_inference(model) if optimize else model

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def warmup_request(self) -> ClassifyRequest:
        return ClassifyRequest(pixels=self.prepare(Image.new("RGB", (self.size, self.size), (128, 128, 128))), top_k=1)

    @torch.inference_mode()
    def run(self, batch: Sequence[ClassifyRequest]) -> list[list[dict[str, Any]]]:
        pixels = torch.stack([request.pixels for request in batch]).to(self.device)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with _autocast(self.device, self.bf16):
            logits = self.model(pixels)
        probabilities = logits.float().softmax(dim=1).cpu()
        k = min(max(request.top_k for request in batch), probabilities.shape[1])
        top_probabilities, top_labels = probabilities.topk(k, dim=1)
        return [
            [
                {"label": int(label), "name": self.class_names[int(label)], "probability": float(probability)}
                for probability, label in zip(top_probabilities[row, : request.top_k], top_labels[row, : request.top_k])
            ]
            for row, request in enumerate(batch)
        ]


class DetectorPredictor:
    """A `DetectorModel` (it does its own preprocessing and precision): boxes in pixels of the image as given.

    A batch of differently sized images is padded to a common size, which changes what a Faster
    R-CNN sees near the borders; so only images that pad to the same input shape share a forward
    pass, and an answer never depends on which other requests arrived with it.
    """

    def __init__(self, model: DetectorModel, *, device: torch.device) -> None:
        self.model = model
        self.device = device
        transform = model.transform
        self.min_size, self.max_size = transform.min_size[-1], transform.max_size  # eval uses the last min_size
        self.size_divisible = transform.size_divisible

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return F.pil_to_tensor(image)

    def warmup_request(self) -> DetectRequest:
        return DetectRequest(
            image=torch.full((3, 480, 640), 128, dtype=torch.uint8), score_threshold=0.5, max_detections=1
        )

    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        """The network input shape of an image: torchvision's resize rule, then padding to size_divisible."""
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        step = self.size_divisible
        return tuple(math.ceil(math.floor(side * scale) / step) * step for side in (height, width))

    @torch.inference_mode()
    def run(self, batch: Sequence[DetectRequest]) -> list[list[dict[str, Any]]]:
        groups: dict[tuple[int, int], list[int]] = {}
        for index, request in enumerate(batch):
            groups.setdefault(self.padded_shape(*request.image.shape[-2:]), []).append(index)
        results: list[list[dict[str, Any]]] = [[] for _ in batch]
        for indices in groups.values():
            requests = [batch[index] for index in indices]
            # NMS only lets a higher score suppress a lower one, so the loosest threshold and largest cap
            # give every request a superset of its own answer, sorted by score; each is then cut to its own.
            outputs = self.model.predict(
                [request.image.to(self.device) for request in requests],
                score_threshold=min(request.score_threshold for request in requests),
                max_detections=max(request.max_detections for request in requests),
                batch_size=len(requests),
            )
            for index, output in zip(indices, outputs):
                results[index] = _cut_detections(output, batch[index])
        return results


def _cut_detections(output: dict[str, Any], request: DetectRequest) -> list[dict[str, Any]]:
    scores = output["scores"].float().cpu()
    order = scores.argsort(descending=True)
    keep = order[scores[order] >= request.score_threshold][: request.max_detections]
    boxes = output["boxes"].float().cpu()[keep]
    labels = output["labels"].cpu()[keep]
    names = [output["names"][int(index)] for index in keep]
    return [
        {"box": [round(float(v), 2) for v in box], "score": float(score), "label": int(label), "name": name}
        for box, score, label, name in zip(boxes, scores[keep], labels, names)
    ]
