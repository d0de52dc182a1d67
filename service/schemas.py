"""The API's request and response bodies; their descriptions become the OpenAPI document."""

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every error answers this shape."""

    detail: str = Field(description="What went wrong, naming the file or parameter.")
    request_id: str = Field(description="This request's id, also in the X-Request-ID header; the log uses it too.")


class ModelRef(BaseModel):
    name: str = Field(description="Checkpoint file name without extension, e.g. 'demo_detector'.")
    version: str = Field(description="'sha256:' and the first 12 hex digits of the checkpoint file.")


class ImageSize(BaseModel):
    width: int = Field(description="Width in pixels as displayed (after EXIF orientation).")
    height: int = Field(description="Height in pixels as displayed (after EXIF orientation).")


class Timing(BaseModel):
    decode: float = Field(description="Reading, decoding and preprocessing the upload, ms.")
    queue: float = Field(description="Waiting for a batch to start, ms.")
    inference: float = Field(description="The batch's forward pass (shared with the other images in it), ms.")
    total: float = Field(description="From the request reaching the route to the answer, ms.")
    batch_size: int = Field(
        description="Images coalesced into the batch this one ran in (a detector runs one forward pass per "
        "padded input shape within it)."
    )


class Detection(BaseModel):
    box: list[float] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels of the image as displayed."
    )
    score: float = Field(ge=0, le=1, description="Detection confidence.")
    label: int = Field(description="Class label 1..K (0 is background inside the model): class_names[label - 1].")
    name: str = Field(description="Class name.")


class DetectResponse(BaseModel):
    model: ModelRef
    image: ImageSize
    detections: list[Detection] = Field(description="Sorted by score, highest first.")
    timing_ms: Timing


class Prediction(BaseModel):
    label: int = Field(description="Class index 0..K-1: class_names[label].")
    name: str = Field(description="Class name.")
    probability: float = Field(ge=0, le=1, description="Softmax probability.")


class ClassifyResponse(BaseModel):
    model: ModelRef
    image: ImageSize
    predictions: list[Prediction] = Field(description="The top_k classes, most probable first.")
    timing_ms: Timing


class ModelInfo(BaseModel):
    role: Literal["detector", "classifier"] = Field(description="Which routes serve it.")
    name: str = Field(description="Checkpoint file name without extension.")
    version: str = Field(description="'sha256:' and the first 12 hex digits of the checkpoint file.")
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


class ServingInfo(BaseModel):
    device: str = Field(description="Where inference runs, e.g. 'cpu' or 'cuda:0'.")
    max_batch: int = Field(description="Most images in one forward pass (MAX_BATCH).")
    max_batch_wait_ms: float = Field(description="Longest wait for a batch to fill (MAX_BATCH_WAIT_MS).")
    max_queue: int = Field(description="Images that may wait before 503 (MAX_QUEUE).")


class ModelsResponse(BaseModel):
    models: list[ModelInfo] = Field(description="Every served model.")
    serving: ServingInfo


class Health(BaseModel):
    status: Literal["ok"] = Field(description="Always 'ok' while the process answers.")


class Readiness(BaseModel):
    status: Literal["ready"] = Field(description="'ready' once every model is loaded and warmed up.")
    models: list[str] = Field(description="Roles of the models loaded and warmed up.")
