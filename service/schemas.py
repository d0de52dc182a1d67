"""The API's request and response bodies; their descriptions become the OpenAPI document."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _example(example: dict[str, Any]) -> ConfigDict:
    """The example /docs shows for a schema (OpenAPI `examples`)."""
    return ConfigDict(json_schema_extra={"examples": [example]})


MODEL_REF = {"name": "demo_detector", "version": "sha256:6750477d5d0e"}
IMAGE_SIZE = {"width": 810, "height": 1080}
TIMING = {"decode": 12.4, "queue": 0.8, "inference": 95.3, "total": 109.1, "batch_size": 1}
DETECTION = {"box": [370.15, 74.32, 575.96, 270.17], "score": 0.907, "label": 3, "name": "triangle"}
PREDICTION = {"label": 1, "name": "automobile", "probability": 0.667}
SERVING = {"device": "cpu", "max_batch": 8, "max_batch_wait_ms": 5.0, "max_queue": 64}
MODEL_INFO = {
    "role": "detector", "name": "demo_detector", "version": "sha256:6750477d5d0e",
    "default": True, "precision": "float32", "last_reload_error": None,
    "file": "demo_detector.safetensors", "demo": True,
    "note": "DEMO MODEL - a small detector trained by this project's pipeline to show the service working, not "
    "for real use. Measured: mAP@0.5=0.9.",
    "kind": "detector", "architecture": "faster_rcnn",
    "architecture_kwargs": {"backbone": "resnet18", "head": "fpn", "num_classes": 4},
    "class_names": ["circle", "square", "triangle", "star"],
    "preprocessing": {"min_size": [128], "max_size": 213},
    "provenance": {"command": "train_det.py --recipe synthetic", "date": "2026-11-23T14:32:56+00:00"},
    "metrics": {"mAP@0.5": 0.9},
}  # fmt: skip


class ErrorResponse(BaseModel):
    """Every error answers this shape."""

    model_config = _example(
        {"detail": "classes: unknown class 'dog'; this model's classes (label=name) are: 1='circle', 2='square'",
         "request_id": "3f1c9a0e5b7d4c2a9e8f6b1d0c3a5e7f"}
    )  # fmt: skip

    detail: str = Field(description="What went wrong, naming the file or parameter.")
    request_id: str = Field(description="This request's id, also in the X-Request-ID header; the log uses it too.")


class ModelRef(BaseModel):
    """Which weights answered."""

    model_config = _example(MODEL_REF)
    name: str = Field(
        description="The served name, what ?model= takes: NAME setting, else the manifest's 'name' or the run a "
        "trainer's model.safetensors came from, else the file name without extension, e.g. 'demo_detector'."
    )
    version: str = Field(description="'sha256:' and the first 12 hex digits of the checkpoint file.")


class ImageSize(BaseModel):
    """The uploaded image's size."""

    model_config = _example(IMAGE_SIZE)
    width: int = Field(description="Width in pixels as displayed (after EXIF orientation).")
    height: int = Field(description="Height in pixels as displayed (after EXIF orientation).")


class Timing(BaseModel):
    """Where the time went, in milliseconds."""

    model_config = _example(TIMING)
    decode: float = Field(description="Reading, decoding and preprocessing the upload, ms.")
    queue: float = Field(description="Waiting for a batch to start, ms.")
    inference: float = Field(description="The batch's forward pass (shared with the other images in it), ms.")
    total: float = Field(description="From the request reaching the route to the answer, ms.")
    batch_size: int = Field(
        description="Images coalesced into the batch this one ran in (a detector runs one forward pass per "
        "padded input shape within it)."
    )


class Detection(BaseModel):
    """One detected object."""

    model_config = _example(DETECTION)
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x1, y1, x2, y2] in pixels of the image as displayed, or as `box_format` and `normalized` ask: "
        "[x, y, width, height] (xywh), [cx, cy, width, height] (cxcywh), as fractions of the image's size.",
    )
    score: float = Field(ge=0, le=1, description="Detection confidence.")
    label: int = Field(description="Class label 1..K (0 is background inside the model): class_names[label - 1].")
    name: str = Field(description="Class name.")


class DetectResponse(BaseModel):
    """One image's detections."""

    model_config = _example({"model": MODEL_REF, "image": IMAGE_SIZE, "detections": [DETECTION], "timing_ms": TIMING})
    model: ModelRef = Field(description="The detector that answered (name and weights' hash).")
    image: ImageSize = Field(description="The image's size as displayed: the pixels `box` is measured in.")
    detections: list[Detection] = Field(description="Sorted by score, highest first.")
    timing_ms: Timing = Field(description="Time spent decoding, queued and in the model, in milliseconds.")


class Prediction(BaseModel):
    """One class and its probability."""

    model_config = _example(PREDICTION)
    label: int = Field(description="Class index 0..K-1: class_names[label].")
    name: str = Field(description="Class name.")
    probability: float = Field(ge=0, le=1, description="Softmax probability.")


class ClassifyResponse(BaseModel):
    """One image's most probable classes."""

    model_config = _example(
        {"model": MODEL_REF | {"name": "demo_classifier"}, "image": IMAGE_SIZE, "predictions": [PREDICTION],
         "timing_ms": TIMING}
    )  # fmt: skip
    model: ModelRef = Field(description="The classifier that answered (name and weights' hash).")
    image: ImageSize = Field(description="The image's size as displayed.")
    predictions: list[Prediction] = Field(description="The top_k classes, most probable first.")
    timing_ms: Timing = Field(description="Time spent decoding, queued and in the model, in milliseconds.")


class ModelInfo(BaseModel):
    """A served model and its manifest."""

    model_config = _example(MODEL_INFO)
    role: Literal["detector", "classifier"] = Field(description="Which routes serve it.")
    name: str = Field(description="The served name (as in every answer's `model.name`; what ?model= takes).")
    version: str = Field(description="'sha256:' and the first 12 hex digits of the checkpoint file.")
    default: bool = Field(description="True for the model of its role that requests without ?model= get.")
    precision: Literal["float32", "bfloat16", "int8"] = Field(
        description="Inference precision: BF16 autocast or not, or int8 (a model written by detection.quantize)."
    )
    runtime: dict[str, Any] | None = Field(
        None,
        description="The model's runtime: what runs its network ('runtime', 'precision'), what "
        "RUNTIME asked for ('requested_runtime': auto picks by a fixed rule), why that runs ('reason'), and an int8 "
        "model's accuracy check ('quantization': metric, fp32 and int8 figures, drop, max_drop).",
    )
    test_time: dict[str, Any] | None = Field(
        None,
        description="A detector's test-time options (DETECTOR_TEST_TIME; all off: the plain detector), with "
        "'ensemble_checkpoints' the file names of the checkpoints averaged with it.",
    )
    last_reload_error: str | None = Field(
        description="Why the last reload of this model failed (the version above still serves), else null."
    )
    file: str = Field(description="Checkpoint file name.")
    demo: bool = Field(description="True for the small demo models shipped with the repository.")
    note: str = Field(description="Plain words on what the model is and what it scored.")
    kind: str = Field(description="'detector' or 'classifier', from the manifest.")
    architecture: str = Field(description="Registered architecture name, e.g. 'resnet50' or 'faster_rcnn'.")
    architecture_kwargs: dict[str, Any] = Field(description="The keyword arguments that rebuild the network.")
    class_names: list[str] = Field(description="Names of the labels, indexed by label.")
    preprocessing: dict[str, Any] = Field(description="Input size and normalisation the model was trained with.")
    provenance: dict[str, Any] = Field(description="How it was trained: data, command, commit, date.")
    metrics: dict[str, Any] = Field(description="Measured scores from the manifest (e.g. mAP, top-1 error).")


class ReloadResponse(BaseModel):
    """A reload that swapped the new version in."""

    model_config = _example(
        {"name": "demo_detector", "version": "sha256:9b1e07c4d2aa", "previous_version": "sha256:6750477d5d0e"}
    )
    name: str = Field(description="The model reloaded.")
    version: str = Field(description="The version serving now ('sha256:' and 12 hex digits of the file).")
    previous_version: str = Field(description="The version it replaced; equal to `version` when the file was the same.")


class ServingInfo(BaseModel):
    """How requests are batched."""

    model_config = _example(SERVING)
    device: str = Field(description="Where inference runs, e.g. 'cpu' or 'cuda:0'.")
    max_batch: int = Field(description="Most images in one forward pass (MAX_BATCH).")
    max_batch_wait_ms: float = Field(description="Longest wait for a batch to fill (MAX_BATCH_WAIT_MS).")
    max_queue: int = Field(description="Images that may wait before 503 (MAX_QUEUE).")


class ModelsResponse(BaseModel):
    """What this server serves."""

    model_config = _example({"models": [MODEL_INFO], "serving": SERVING})
    models: list[ModelInfo] = Field(description="Every served model.")
    serving: ServingInfo = Field(description="The batching settings in force.")


class Health(BaseModel):
    """Liveness."""

    model_config = _example({"status": "ok"})
    status: Literal["ok"] = Field(description="Always 'ok' while the process answers.")


class Readiness(BaseModel):
    """Readiness."""

    model_config = _example({"status": "ready", "models": ["classifier", "detector"]})
    status: Literal["ready"] = Field(description="'ready' once every model is loaded and warmed up.")
    models: list[str] = Field(description="Roles (detector, classifier) of the models loaded and warmed up.")
