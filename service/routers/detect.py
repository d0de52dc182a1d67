"""POST /detect, /detect/batch and /detect/annotated (the detections drawn on the image)."""

import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service.annotate import render_annotated
from service.dependencies import DetectorDep, SettingsDep, reject_unknown_query
from service.detect_options import BOX_FORMATS, BoxFormat, convert_box, parse_classes
from service.errors import INFERENCE_ERRORS
from service.loading import ServedModel
from service.predictors import DetectRequest
from service.request_path import Answer, infer
from service.schemas import Detection, DetectResponse
from service.security import KeyCheckedRoute, api_key_schemes
from service.uploads import RAW_IMAGE_BODY, ImageUpload

router = APIRouter(
    tags=["detection"],
    dependencies=[Depends(api_key_schemes), Depends(reject_unknown_query)],
    responses=INFERENCE_ERRORS,
    route_class=KeyCheckedRoute,
)


@dataclass(frozen=True)
class DetectOptions:
    """What a detection request asks for besides its images (the query parameters)."""

    score_threshold: float
    max_detections: int
    iou_threshold: float | None
    classes: list[str] | None

    def request_maker(self, detector: ServedModel):
        labels = parse_classes(self.classes, class_names=detector.manifest["class_names"])
        return lambda image: DetectRequest(
            image=image, score_threshold=self.score_threshold, max_detections=self.max_detections,
            iou_threshold=self.iou_threshold, labels=labels,
        )  # fmt: skip


def detect_options(
    score_threshold: Annotated[
        float, Query(ge=0, le=1, description="Keep detections scoring above this.", examples=[0.5])
    ] = 0.5,
    max_detections: Annotated[
        int, Query(ge=1, le=1000, description="Keep at most this many, highest scores first.", examples=[100])
    ] = 100,
    iou_threshold: Annotated[
        float | None,
        Query(
            ge=0,
            le=1,
            examples=[0.5],
            description="Non-maximum suppression per class: of two boxes of one class overlapping by more than "
            "this (intersection over union), the lower-scoring one is dropped. Lower keeps fewer boxes. "
            "Default: the model's own (box_nms_thresh in /models, 0.5 for the paper's detectors).",
        ),
    ] = None,  # fmt: skip
    classes: Annotated[
        list[str] | None,
        Query(
            examples=[["person", "car"]],
            description="Keep only these classes: names or label ids (1..K), repeated (`classes=person&classes=car`) "
            "or comma-separated (`classes=person,car`). A name the model does not know answers 422 listing "
            "its classes. Default: every class.",
        ),
    ] = None,
) -> DetectOptions:
    return DetectOptions(
        score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold, classes=classes
    )


@dataclass(frozen=True)
class BoxOptions:
    box_format: BoxFormat
    normalized: bool


def box_options(
    box_format: Annotated[
        BoxFormat,
        Query(description="How `box` is written: " + "; ".join(f"`{k}` {v}" for k, v in BOX_FORMATS.items()) + ".",
              examples=["xyxy"]),
    ] = "xyxy",
    normalized: Annotated[
        bool,
        Query(description="Coordinates as fractions of the image's width and height (0..1) instead of pixels.",
              examples=[False]),
    ] = False,
) -> BoxOptions:  # fmt: skip
    return BoxOptions(box_format=box_format, normalized=normalized)


DetectOptionsDep = Annotated[DetectOptions, Depends(detect_options)]
BoxOptionsDep = Annotated[BoxOptions, Depends(box_options)]


def _response(served: ServedModel, answer: Answer, started: float, boxes: BoxOptions) -> DetectResponse:
    width, height = answer.upload.size

    def written(box: list[float]) -> list[float]:
        return convert_box(box, box_format=boxes.box_format, normalized=boxes.normalized, width=width, height=height)

    return DetectResponse(
        **answer.response_fields(served, started=started),
        detections=[Detection(**{**detection, "box": written(detection["box"])}) for detection in answer.result],
    )


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects in one image",
    openapi_extra=RAW_IMAGE_BODY,
    description="The image as multipart field `file`, or as the raw request body with its image Content-Type. "
    "Answers the boxes, scores and class names, highest score first, in pixels of the image as displayed "
    "(after EXIF orientation) unless `normalized`.",
)
async def detect(
    request: Request,
    detector: DetectorDep,
    settings: SettingsDep,
    file: ImageUpload,
    options: DetectOptionsDep,
    boxes: BoxOptionsDep,
) -> DetectResponse:
    started = time.perf_counter()
    (answer,) = await infer(
        request, detector, [file], settings=settings, make_request=options.request_maker(detector), batch_form=False
    )
    return _response(detector, answer, started, boxes)


@router.post(
    "/detect/batch",
    response_model=list[DetectResponse],
    summary="Detect objects in several images",
    description="Up to MAX_FILES images as repeated multipart fields `files`; one answer per image, in order. "
    "One bad file fails the request with an error naming it.",
)
async def detect_batch(
    request: Request,
    detector: DetectorDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="The images; answers come in the same order.")],
    options: DetectOptionsDep,
    boxes: BoxOptionsDep,
) -> list[DetectResponse]:
    started = time.perf_counter()
    answers = await infer(
        request, detector, files, settings=settings, make_request=options.request_maker(detector), batch_form=True
    )
    return [_response(detector, answer, started, boxes) for answer in answers]


@router.post(
    "/detect/annotated",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The image with boxes drawn."}},
    summary="Detect objects and return the image with the boxes drawn on it",
    openapi_extra=RAW_IMAGE_BODY,
    description="As /detect, answered as a picture: each box in its class's colour, labelled with the name and "
    "score on a filled background, in a font scaled to the image. `X-Detections` says how many.",
)
async def detect_annotated(
    request: Request,
    detector: DetectorDep,
    settings: SettingsDep,
    file: ImageUpload,
    options: DetectOptionsDep,
    format: Annotated[
        Literal["png", "jpeg"], Query(description="Encoding of the returned image.", examples=["png"])
    ] = "png",
) -> Response:
    (answer,) = await infer(
        request, detector, [file], settings=settings, make_request=options.request_maker(detector), batch_form=False,
        keep_images=True,
    )  # fmt: skip
    content, media_type = await run_in_threadpool(
        render_annotated, answer.upload.image, answer.result, image_format=format
    )
    await run_in_threadpool(answer.upload.release_image)
    return Response(content=content, media_type=media_type, headers={"X-Detections": str(len(answer.result))})
