"""POST /detect, /detect/batch and /detect/annotated (the detections drawn on the image)."""

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service.annotate import render_annotated
from service.dependencies import DetectorDep, SettingsDep
from service.errors import INFERENCE_ERRORS
from service.inference import Answer, infer, model_ref
from service.predictors import DetectRequest
from service.schemas import Detection, DetectResponse, ImageSize
from service.security import KeyCheckedRoute, api_key_schemes
from service.uploads import one_file_part

router = APIRouter(
    tags=["detection"],
    dependencies=[Depends(api_key_schemes)],
    responses=INFERENCE_ERRORS,
    route_class=KeyCheckedRoute,
)

ScoreThreshold = Annotated[float, Query(ge=0, le=1, description="Drop detections scoring below this.")]
MaxDetections = Annotated[int, Query(ge=1, le=1000, description="Keep at most this many, highest scores first.")]
ImageFile = Annotated[UploadFile, File(description="The image (JPEG, PNG, WebP, BMP, GIF, TIFF, ...).")]


def _response(served, answer: Answer, started: float) -> DetectResponse:
    width, height = answer.upload.size
    return DetectResponse(
        model=model_ref(served),
        image=ImageSize(width=width, height=height),
        detections=[Detection(**detection) for detection in answer.result],
        timing_ms=answer.timing_ms(started),
    )


def _request_maker(score_threshold: float, max_detections: int):
    return lambda image: DetectRequest(image=image, score_threshold=score_threshold, max_detections=max_detections)


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects in one image",
    dependencies=[Depends(one_file_part)],
)
async def detect(
    detector: DetectorDep,
    settings: SettingsDep,
    file: ImageFile,
    score_threshold: ScoreThreshold = 0.5,
    max_detections: MaxDetections = 100,
) -> DetectResponse:
    started = time.perf_counter()
    (answer,) = await infer(
        detector, [file], settings=settings, make_request=_request_maker(score_threshold, max_detections),
        batch_form=False,
    )  # fmt: skip
    return _response(detector, answer, started)


@router.post("/detect/batch", response_model=list[DetectResponse], summary="Detect objects in several images")
async def detect_batch(
    detector: DetectorDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="The images; answers come in the same order.")],
    score_threshold: ScoreThreshold = 0.5,
    max_detections: MaxDetections = 100,
) -> list[DetectResponse]:
    started = time.perf_counter()
    answers = await infer(
        detector, files, settings=settings, make_request=_request_maker(score_threshold, max_detections),
        batch_form=True,
    )  # fmt: skip
    return [_response(detector, answer, started) for answer in answers]


@router.post(
    "/detect/annotated",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The image with boxes drawn."}},
    summary="Detect objects and return the image with the boxes drawn on it",
    dependencies=[Depends(one_file_part)],
)
async def detect_annotated(
    detector: DetectorDep,
    settings: SettingsDep,
    file: ImageFile,
    score_threshold: ScoreThreshold = 0.5,
    max_detections: MaxDetections = 100,
    format: Annotated[Literal["png", "jpeg"], Query(description="Encoding of the returned image.")] = "png",
) -> Response:
    (answer,) = await infer(
        detector, [file], settings=settings, make_request=_request_maker(score_threshold, max_detections),
        batch_form=False, keep_images=True,
    )  # fmt: skip
    content, media_type = await run_in_threadpool(
        render_annotated, answer.upload.image, answer.result, image_format=format
    )
    await run_in_threadpool(answer.upload.release_image)
    return Response(content=content, media_type=media_type, headers={"X-Detections": str(len(answer.result))})
