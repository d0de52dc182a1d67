"""The one inference path of a detector, the `DefaultPredictor` of this project: the predict CLI, the service,
the Python API and the ONNX runner all call it, so the same image gives the same detections everywhere.

    predictor = Predictor.from_checkpoint("service/models/demo_detector.safetensors")
    results = predictor.predict(["bus.jpg", pil_image], score_threshold=0.5)  # one answer per image

image -> `prepare` (uint8 -> float, normalise, the model's own bilinear resize: training's transform, skipped
when the image is already at size) -> group by padded input shape (only images of one shape share a
forward pass, so an answer never depends on its batch-mates) -> `forward`, the one network call, under one
precision policy -> boxes in source pixels (the model's one rescale) -> the `Cut` (score threshold, classes,
top-k) -> records `{"box", "score", "label", "name"}`. A detection is kept when its score is above the
threshold (`>`, as the model's own box_score_thresh and the exported graph apply it).
"""

import os
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection.image_list import ImageList
from torchvision.transforms.v2.functional import to_dtype

from backbone.devices import native_bf16, resolve_device
from detection.decoding import DecodedImage, decode_image
from detection.detector import Detector
from detection.detector_checkpoint import load_detector
from detection.images import to_float_image
from detection.test_time import TestTimeOptions, detect_with_options

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
# "No cap" for the network's max_detections: every box above the score threshold, for a cut by class.
UNCAPPED = 1 << 30
BOX_DECIMALS = 2
PLAIN = (
    TestTimeOptions()
)  # the test-time ladder off: the plain detector  # records give boxes to 0.01 px, the one rounding on the way out


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """ "auto": bf16 where `device` computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), fp32
    elsewhere, where emulated bf16 is slower (docs/BENCHMARKS.md, "bf16"). Not the paper's (fp32): on a
    real-image detector bf16 moved AP by +0.22 points."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@dataclass(frozen=True)
class Prepared:
    """One image as the network takes it, before padding: what a queued request holds."""

    # float32 [3, h, w], normalised, at the model's input size; for test-time rungs that resize the image
    # themselves (TestTimeOptions.from_source), the source pixels in [0, 1]
    pixels: torch.Tensor
    source_size: tuple[int, int]  # (height, width) of the image as given: boxes are answered in its pixels
    padded_shape: tuple[int, int]  # the batch's (H, W) once padded; the grouping key

    @property
    def nbytes(self) -> int:
        return self.pixels.numel() * self.pixels.element_size()


# What a queue holds for one image until its batch runs (Predictor.queueable): the cheaper of the two.
Queueable = Prepared | DecodedImage


@dataclass(frozen=True)
class Cut:
    """What one request keeps of the network's answer: scores above `score_threshold`, the `labels` (1..K;
    None: all), the best `max_detections`; `iou_threshold` is the per-class NMS overlap (None: the model's)."""

    score_threshold: float = 0.5
    max_detections: int = 100
    labels: frozenset[int] | None = None
    iou_threshold: float | None = None


ImageInput = DecodedImage | Image.Image | torch.Tensor | str | os.PathLike | bytes


class Predictor:
    """A detector's inference end to end; see the module docstring. `precision`: "auto", "fp32" or "bf16";
    `optimize` folds BN and fuses convs (irreversible: the model can no longer be trained); `test_time`: the
    test-time ladder (detection/test_time.py; the default is the plain detector)."""

    runtime = "torch"  # what runs the network: eager PyTorch here; RuntimePredictor names its own

    def __init__(
        self,
        model: Detector,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        optimize: bool = True,
        test_time: TestTimeOptions = PLAIN,
    ) -> None:
        if test_time.maxout_sizes:  # at construction, not at the first image: a service refuses to start
            model.check_maxout()
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device), setting="device ")
        self.precision: Precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        if optimize and not model.optimized:
            model.optimize_for_inference()  # the fp32 detections stay the unoptimized model's (docs/BENCHMARKS.md)
        self.transform = model.transform
        self.test_time = test_time

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        class_names: Sequence[str] | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        optimize: bool = True,
        test_time: TestTimeOptions = PLAIN,
    ) -> "Predictor":
        """Our .safetensors or a torchvision Faster R-CNN .pth (its class names given)."""
        model, _ = load_detector(path, class_names=class_names)
        return cls(model, device=device, precision=precision, optimize=optimize, test_time=test_time)

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    # --- images in ------------------------------------------------------------------------------------------

    def prepare(self, image: ImageInput, *, index: int = 0) -> Prepared:
        """The image as the network takes it: training's transform (normalise, then the bilinear resize of
        `DetectorTransform`), on the CPU, so a queued request holds a model-sized float image. `index` names
        the image in error messages."""
        pixels = as_pixels(image, index=index)
        source_size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        fresh = pixels.dtype == torch.uint8
        if fresh:
            pixels = to_dtype(pixels.contiguous(), torch.float32, scale=True)  # training's conversion (batch_to_device)
        if self.test_time.from_source:  # these rungs resize the image themselves; each image runs alone
            return Prepared(pixels=pixels.contiguous(), source_size=source_size, padded_shape=source_size)
        with torch.no_grad():
            # in place only in our own float copy, never in the caller's float image
            normalized = self.transform.normalize(pixels.contiguous(), in_place=fresh)
            resized, _ = self.transform.resize(normalized, None)
        return Prepared(
            pixels=resized, source_size=source_size, padded_shape=self.transform.padded_shape(*resized.shape[-2:])
        )

    def prepared_nbytes(self, height: int, width: int) -> int:
        """Bytes `prepare` makes of a height x width image: float32 RGB at the model's size (or at the source's,
        for test-time rungs that resize it themselves)."""
        if not self.test_time.from_source:
            height, width = self.transform.resized_size(height, width)
        return 3 * height * width * torch.float32.itemsize

    def queueable(self, image: DecodedImage) -> Queueable:
        """What a queue should hold for `image` until its batch runs: the decoded source where it takes fewer bytes
        than the prepared image (an 8-bit photo smaller than 4x the model's input; `run` prepares it then, with the
        same `prepare`, so the answer is the same), else the prepared image (a large upload, once model-sized)."""
        width, height = image.size
        return image if image.nbytes <= self.prepared_nbytes(height, width) else self.prepare(image)

    def batch(self, prepared: Sequence[Prepared]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, image_sizes, original_sizes) as the network and the exported graph take them: the images
        zero-padded right and below to one shape (torchvision's batch_images)."""
        images = self.transform.batch_images([item.pixels for item in prepared], self.transform.size_divisible)
        image_sizes = torch.tensor([list(item.pixels.shape[-2:]) for item in prepared], dtype=torch.int64)
        original_sizes = torch.tensor([list(item.source_size) for item in prepared], dtype=torch.int64)
        return images, image_sizes, original_sizes

    # --- the network ----------------------------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        original_sizes: torch.Tensor,
        *,
        score_threshold: float,
        max_detections: int,
        iou_threshold: float | None,
    ) -> list[dict[str, torch.Tensor]]:
        """The one network call: a padded normalised batch -> per image boxes (source pixels), scores, labels,
        highest score first. A runtime other than eager PyTorch replaces this method alone."""
        with torch.inference_mode(), self.autocast():
            _, detections = self.model.detect(
                ImageList(images.to(self.device, non_blocking=True), [tuple(size) for size in image_sizes.tolist()]),
                [tuple(size) for size in original_sizes.tolist()],
                score_threshold=score_threshold,
                max_detections=max_detections,
                iou_threshold=iou_threshold,
                vote_threshold=self.test_time.vote,
                refine_boxes=self.test_time.refine_boxes,
            )
        return [{key: value.float() if key != "labels" else value for key, value in d.items()} for d in detections]

    def forward_from_source(self, pixels: torch.Tensor, cut: Cut) -> dict[str, torch.Tensor]:
        """One source image [3, H, W] in [0, 1] through the test-time rungs that resize it themselves (other
        sizes, mirroring, a pyramid, tiles): its boxes (source pixels), scores, labels, highest score first."""
        with torch.inference_mode(), self.autocast():
            (detections,) = detect_with_options(
                self.model, [pixels.to(self.device)], self.test_time, score_threshold=cut.score_threshold,
                max_detections=UNCAPPED if cut.labels is not None else cut.max_detections,
                iou_threshold=cut.iou_threshold,
            )  # fmt: skip
        return {key: value.float() if key != "labels" else value for key, value in detections.items()}

    def autocast(self):
        """The precision policy's context for a network call."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()

    # --- batches of prepared images -------------------------------------------------------------------------

    def detect(
        self, prepared: Sequence[Prepared], cuts: Sequence[Cut], *, batch_size: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image boxes [N, 4] (x1, y1, x2, y2, source pixels), scores, labels (1..K), each cut by its `Cut`.

        Images share a forward pass only when they pad to one shape and ask for one NMS overlap (NMS at one
        overlap cannot be undone into another's answer). NMS is per class and only lets a higher score
        suppress a lower one, so the loosest threshold and largest cap give every image a superset of its own
        answer, which its cut then trims. A class filter lifts the cap: the top N of all classes may hold
        fewer than N of the chosen ones.
        """
        if len(prepared) != len(cuts):
            raise ValueError(f"{len(prepared)} images but {len(cuts)} cuts")
        if self.test_time.from_source:
            return [
                cut_detections(self.forward_from_source(item.pixels, cut), cut) for item, cut in zip(prepared, cuts)
            ]
        groups: dict[tuple[tuple[int, int], float | None], list[int]] = {}
        for index, (item, cut) in enumerate(zip(prepared, cuts)):
            groups.setdefault((item.padded_shape, cut.iou_threshold), []).append(index)
        results: list[dict[str, torch.Tensor]] = [{} for _ in prepared]
        for (_, iou_threshold), indices in groups.items():
            step = batch_size or len(indices)
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                chunk_cuts = [cuts[index] for index in chunk]
                filtered = any(cut.labels is not None for cut in chunk_cuts)
                outputs = self.forward(
                    *self.batch([prepared[index] for index in chunk]),
                    score_threshold=min(cut.score_threshold for cut in chunk_cuts),
                    max_detections=UNCAPPED if filtered else max(cut.max_detections for cut in chunk_cuts),
                    iou_threshold=iou_threshold,
                )
                for index, output in zip(chunk, outputs):
                    results[index] = cut_detections(output, cuts[index])
        return results

    def run(self, queued: Sequence[Queueable], cuts: Sequence[Cut]) -> list[list[dict[str, Any]]]:
        """Records per image: the service's batches (each request with its own cut), of what `queueable` gave."""
        prepared = [item if isinstance(item, Prepared) else self.prepare(item) for item in queued]
        return [self.records(detections) for detections in self.detect(prepared, cuts)]

    def records(self, detections: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """`{"box": [x1, y1, x2, y2], "score", "label", "name"}` per detection, as every entry point answers."""
        boxes = detections["boxes"].float().cpu()
        scores, labels = detections["scores"].float().cpu(), detections["labels"].cpu()
        return [
            {
                "box": [round(float(v), BOX_DECIMALS) for v in box],
                "score": float(score),
                "label": int(label),
                "name": self.class_names[int(label) - 1],
            }
            for box, score, label in zip(boxes, scores, labels)
        ]

    # --- the Python API -------------------------------------------------------------------------------------

    def predict(
        self,
        images: Iterable[ImageInput],
        *,
        score_threshold: float = 0.5,
        max_detections: int = 100,
        classes: Iterable[str | int] | None = None,
        iou_threshold: float | None = None,
        batch_size: int = 4,
    ) -> list[dict[str, Any]]:
        """Per image `{"width", "height", "precision", "detections": [records]}`. Images: paths or bytes (decoded
        as displayed, EXIF applied), DecodedImage, PIL images (pixels as stored) or uint8/uint16/float tensors
        [C, H, W]. `classes`: names or labels to keep (None: all)."""
        if isinstance(images, (Image.Image, torch.Tensor, np.ndarray, str, bytes, os.PathLike, DecodedImage)):
            raise TypeError("predict takes a list of images; wrap a single image in a list")
        cut = Cut(
            score_threshold=score_threshold,
            max_detections=max_detections,
            labels=self.labels_of(classes),
            iou_threshold=iou_threshold,
        )
        prepared = [self.prepare(image, index=index) for index, image in enumerate(images)]
        detections = self.detect(prepared, [cut] * len(prepared), batch_size=batch_size)
        return [
            {
                "width": item.source_size[1],
                "height": item.source_size[0],
                "precision": self.precision,
                "detections": self.records(result),
            }
            for item, result in zip(prepared, detections)
        ]

    def labels_of(self, classes: Iterable[str | int] | None) -> frozenset[int] | None:
        """Class names or labels (1..K) -> labels; None keeps every class."""
        return None if classes is None else labels_of(classes, class_names=self.class_names)


def _label_id(value: str | int, *, count: int) -> int | None:
    """The label id `value` is or spells in ASCII digits, if it is one of 1..count. `str.isdigit` also accepts `¹`
    and `٣` (which `int` refuses or reads) and `int` refuses over 4,300 digits; no label needs 10 digits."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdecimal()) or len(value) > 9:
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= count else None


def _shortened(value: str | int, limit: int = 40) -> str | int:
    """A client's value as an error quotes it: a 4,000-character one is not echoed whole."""
    text = str(value)
    return value if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def labels_of(classes: Iterable[str | int], *, class_names: Sequence[str]) -> frozenset[int]:
    """Labels (1..K) from class names or label ids (a name first: a class may be called "1"); ValueError listing
    the model's classes for one it does not know, or when none is given."""
    label_of = {name: label for label, name in enumerate(class_names, start=1)}
    labels: set[int] = set()
    unknown: list[str | int] = []
    for value in classes:
        if value in label_of:
            labels.add(label_of[value])
        elif (label := _label_id(value, count=len(class_names))) is not None:
            labels.add(label)
        else:
            unknown.append(value)
    if unknown:
        listed = ", ".join(f"{label}={name!r}" for label, name in enumerate(class_names, start=1))
        raise ValueError(
            f"unknown class {', '.join(repr(_shortened(value)) for value in unknown)}; "
            f"this model's classes (label=name) are: {listed}"
        )
    if not labels:
        raise ValueError("no class given (omit the parameter to keep every class)")
    return frozenset(labels)


def cut_detections(detections: dict[str, torch.Tensor], cut: Cut) -> dict[str, torch.Tensor]:
    """The detections `cut` keeps, highest score first (a stable sort: ties keep the network's order)."""
    scores = detections["scores"]
    order = scores.argsort(descending=True, stable=True)
    order = order[scores[order] > cut.score_threshold]
    if cut.labels is not None:
        order = order[torch.isin(detections["labels"][order], torch.tensor(sorted(cut.labels), device=order.device))]
    keep = order[: cut.max_detections]
    return {key: value[keep] for key, value in detections.items()}


def as_pixels(image: ImageInput, *, index: int = 0) -> torch.Tensor:
    """[3, H, W] uint8 or float in [0, 1] from anything `Predictor.prepare` takes."""
    if isinstance(image, bytes):
        image = decode_image(image)
    elif isinstance(image, (str, os.PathLike)):
        image = decode_image(image, label=f"file {str(image)!r}")
    if isinstance(image, DecodedImage):
        return torch.from_numpy(image.pixels).permute(2, 0, 1)
    return to_float_image(image, index=index)
