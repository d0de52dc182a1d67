"""Model adapters for the batching engine: `queueable` turns one decoded image into what its request holds while
it waits, `run` runs a batch of requests.

`queueable` runs in the request's worker thread and gives the cheaper of the decoded image and the model's input
(never a large upload at full resolution); each request's `nbytes` is charged to the service's one memory budget
(IMAGE_MEMORY_BYTES) while it waits. `run` runs in the engine's inference thread. The detector's side is
`detection.predictor`.
"""

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from backbone import ResNet
from backbone.bn_folding import optimize_for_inference
from backbone.preprocessing import ClassifierPreprocessing
from detection import Detector
from detection.decoding import DecodedImage
from detection.predictor import Cut, Predictor, Queueable

if TYPE_CHECKING:  # detection.runtimes imports onnx: only a server under another RUNTIME than torch pays for it
    from detection.runtimes import Network


@dataclass(frozen=True)
class ClassifyRequest:
    pixels: torch.Tensor  # normalised float [3, size, size]
    top_k: int

    @property
    def nbytes(self) -> int:
        """What it holds while it waits."""
        return self.pixels.numel() * self.pixels.element_size()


@dataclass(frozen=True)
class DetectRequest:
    image: Queueable  # the 8-bit source or the model-sized float, whichever is smaller (Predictor.queueable)
    score_threshold: float
    max_detections: int
    iou_threshold: float | None = None  # per-class NMS overlap; None: the model's own
    labels: frozenset[int] | None = None  # the classes to keep (labels 1..K); None: all

    @property
    def nbytes(self) -> int:
        """What it holds while it waits."""
        return self.image.nbytes

    @property
    def cut(self) -> Cut:
        return Cut(
            score_threshold=self.score_threshold,
            max_detections=self.max_detections,
            labels=self.labels,
            iou_threshold=self.iou_threshold,
        )


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


class ClassifierPredictor:
    """ResNet classifier: the manifest's preprocessing (`backbone.preprocessing`), softmax, top-k. `network`, a
    detection.runtimes Network (the checkpoint under RUNTIME, or an int8 model of detection.quantize), runs the
    logits instead of `model`, on the CPU."""

    def __init__(
        self,
        model: ResNet | None,
        *,
        class_names: Sequence[str],
        preprocessing: dict[str, Any],
        device: torch.device,
        optimize: bool,
        bf16: bool,
        network: "Network | None" = None,
    ) -> None:
        config = model.config if model is not None else network.manifest.get("architecture_kwargs", {})
        self.preprocessing = ClassifierPreprocessing.from_manifest(preprocessing, stem=config.get("stem", "imagenet"))
        self.class_names = list(class_names)
        self.device = device
        self.bf16 = bf16 and network is None
        self.network = network
        self.channels_last = optimize and network is None
        self.model = None
        if model is not None:
            model = model.to(device).eval()
            self.model = optimize_for_inference(model) if optimize else model

    def prepare(self, image: DecodedImage) -> torch.Tensor:
        """8-bit resize and crop of the region the model sees, then float: [3, size, size] normalised."""
        return self.preprocessing.prepare(image.to_pil())

    def queueable(self, image: DecodedImage) -> torch.Tensor:
        """What a queued request holds: the prepared crop (at most size x size, smaller than any source worth it)."""
        return self.prepare(image)

    def warmup_request(self) -> ClassifyRequest:
        size = self.preprocessing.size
        grey = DecodedImage(pixels=np.full((size, size, 3), 128, dtype=np.uint8))
        return ClassifyRequest(pixels=self.prepare(grey), top_k=1)

    @torch.inference_mode()
    def run(self, batch: Sequence[ClassifyRequest]) -> list[list[dict[str, Any]]]:
        pixels = torch.stack([request.pixels for request in batch]).to(self.device)
        if self.network is not None:
            (logits,) = self.network(pixels)
        else:
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
    """The engine's adapter to `detection.predictor.Predictor`, the one inference path of the CLI and the API:
    `queueable` runs in the request's thread at admission (a queued request holds the 8-bit source or the
    model-sized float image, whichever is smaller), `run` in the engine's thread; preparation, grouping,
    precision, rescaling, each request's own cut and the records are the Predictor's."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def model(self) -> Detector:
        return self.predictor.model

    def queueable(self, image: DecodedImage) -> Queueable:
        return self.predictor.queueable(image)

    def warmup_request(self) -> DetectRequest:
        grey = DecodedImage(pixels=np.full((480, 640, 3), 128, dtype=np.uint8))
        return DetectRequest(image=self.queueable(grey), score_threshold=0.5, max_detections=1)

    def run(self, batch: Sequence[DetectRequest]) -> list[list[dict[str, Any]]]:
        return self.predictor.run([request.image for request in batch], [request.cut for request in batch])
