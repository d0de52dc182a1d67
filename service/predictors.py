"""Model adapters for the batching engine: `prepare` one decoded image, `run` a batch of prepared requests.

`prepare` runs in the request's worker thread (in parallel with inference) and brings the image to
what the model consumes while it is still 8-bit, so a queued request holds a model-sized image, never
the upload's full resolution; `run` runs in the engine's inference thread. Requests in one batch may ask
for different thresholds or top-k: the batch is run once with the loosest, and each request is then cut
to its own.
"""

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from backbone import ResNet
from backbone.inference import optimize_for_inference
from backbone.preprocessing import ClassifierPreprocessing
from detection import Detector
from detection.decoding import DecodedImage


@dataclass(frozen=True)
class ClassifyRequest:
    pixels: torch.Tensor  # normalised float [3, size, size]
    top_k: int


@dataclass(frozen=True)
class ResizedImage:
    """An upload brought to the detector's input size in 8-bit, and the size its boxes are answered in."""

    pixels: torch.Tensor  # uint8 [3, h, w], h and w from the detector's own resize rule
    original_size: tuple[int, int]  # (height, width) as displayed


@dataclass(frozen=True)
class DetectRequest:
    image: ResizedImage
    score_threshold: float
    max_detections: int
    iou_threshold: float | None = None  # per-class NMS overlap; None: the model's own
    labels: frozenset[int] | None = None  # the classes to keep (labels 1..K); None: all


UNCAPPED = 1 << 30  # "no cap" for the detector's max_detections: every box above the score threshold


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


class ClassifierPredictor:
    """ResNet classifier: the manifest's preprocessing (`backbone.preprocessing`), softmax, top-k."""

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
        self.preprocessing = ClassifierPreprocessing.from_manifest(
            preprocessing, stem=model.config.get("stem", "imagenet")
        )
        self.class_names = list(class_names)
        self.device = device
        self.bf16 = bf16
        model = model.to(device).eval()
        self.channels_last = optimize
        self.model = optimize_for_inference(model) if optimize else model

    def prepare(self, image: DecodedImage) -> torch.Tensor:
        """8-bit resize and crop of the region the model sees, then float: [3, size, size] normalised."""
        return self.preprocessing.prepare(image.to_pil())

    def warmup_request(self) -> ClassifyRequest:
        size = self.preprocessing.size
        grey = DecodedImage(pixels=np.full((size, size, 3), 128, dtype=np.uint8))
        return ClassifyRequest(pixels=self.prepare(grey), top_k=1)

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
    """A `detection.Detector` (it does its own normalisation and precision): boxes in pixels of the image as given.

    `prepare` resizes the upload in 8-bit to the size the detector asks for (`input_size`, its own
    rule); boxes come back in that image's pixels and are scaled to the upload's. A batch of
    differently sized images is padded to a common size, which changes what a Faster R-CNN sees near
    the borders; so only images that pad to the same input shape share a forward pass, and an answer
    never depends on which other requests arrived with it.
    """

    def __init__(self, model: Detector, *, device: torch.device) -> None:
        self.model = model
        self.device = device

    def prepare(self, image: DecodedImage) -> ResizedImage:
        """Bilinear in 8-bit (antialiased when shrinking: PIL's filter widens with the scale)."""
        image = image.to_pil()
        width, height = image.size
        input_height, input_width = self.model.input_size(height, width)
        resized = image.resize((input_width, input_height), resample=Image.Resampling.BILINEAR)
        return ResizedImage(pixels=F.pil_to_tensor(resized), original_size=(height, width))

    def warmup_request(self) -> DetectRequest:
        return DetectRequest(
            image=self.prepare(DecodedImage(pixels=np.full((480, 640, 3), 128, dtype=np.uint8))),
            score_threshold=0.5,
            max_detections=1,
        )

    @torch.inference_mode()
    def run(self, batch: Sequence[DetectRequest]) -> list[list[dict[str, Any]]]:
        # One forward pass per padded input shape and NMS overlap: NMS at one overlap cannot be undone into
        # another's answer, so requests asking for different ones do not share a pass.
        groups: dict[tuple[tuple[int, int], float | None], list[int]] = {}
        for index, request in enumerate(batch):
            shape = self.model.input_size(*request.image.pixels.shape[-2:], padded=True)
            groups.setdefault((shape, request.iou_threshold), []).append(index)
        results: list[list[dict[str, Any]]] = [[] for _ in batch]
        for (_, iou_threshold), indices in groups.items():
            requests = [batch[index] for index in indices]
            # NMS is per class and only lets a higher score suppress a lower one, so the loosest threshold and
            # largest cap give every request a superset of its own answer, sorted by score; each is then cut to
            # its own classes, threshold and count. A class filter lifts the cap: the top N of all classes may
            # hold fewer than N of the chosen ones.
            filtered = any(request.labels is not None for request in requests)
            outputs = self.model.predict(
                [request.image.pixels.to(self.device) for request in requests],
                score_threshold=min(request.score_threshold for request in requests),
                max_detections=UNCAPPED if filtered else max(request.max_detections for request in requests),
                batch_size=len(requests),
                iou_threshold=iou_threshold,
            )
            for index, output in zip(indices, outputs):
                results[index] = _cut_detections(output, batch[index])
        return results


def _cut_detections(output: dict[str, Any], request: DetectRequest) -> list[dict[str, Any]]:
    scores = output["scores"].float().cpu()
    order = scores.argsort(descending=True)
    order = order[scores[order] >= request.score_threshold]
    if request.labels is not None:
        order = order[torch.isin(output["labels"].cpu()[order], torch.tensor(sorted(request.labels)))]
    keep = order[: request.max_detections]
    boxes = _to_original_pixels(output["boxes"].float().cpu()[keep], request.image)
    labels = output["labels"].cpu()[keep]
    names = [output["names"][int(index)] for index in keep]
    return [
        {"box": [round(float(v), 2) for v in box], "score": float(score), "label": int(label), "name": name}
        for box, score, label, name in zip(boxes, scores[keep], labels, names)
    ]


def _to_original_pixels(boxes: torch.Tensor, image: ResizedImage) -> torch.Tensor:
    """Boxes in the resized image's pixels -> the upload's, clipped to it (the ratio can overshoot by ~1e-5)."""
    height, width = image.original_size
    input_height, input_width = image.pixels.shape[-2:]
    scale = torch.tensor([width / input_width, height / input_height] * 2)
    limit = torch.tensor([width, height] * 2, dtype=torch.float32)
    return torch.minimum(boxes * scale, limit).clamp(min=0)
