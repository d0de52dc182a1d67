"""POST /classify and /classify/batch."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from service.dependencies import ClassifierDep, SettingsDep, reject_unknown_query
from service.errors import INFERENCE_ERRORS
from service.loading import ServedModel
from service.predictors import ClassifyRequest
from service.request_path import Answer, infer
from service.schemas import ClassifyResponse, Prediction
from service.security import KeyCheckedRoute, api_key_schemes
from service.uploads import RAW_IMAGE_BODY, ImageUpload

router = APIRouter(
    tags=["classification"],
    dependencies=[Depends(api_key_schemes), Depends(reject_unknown_query)],
    responses=INFERENCE_ERRORS,
    route_class=KeyCheckedRoute,
)

TopK = Annotated[
    int, Query(ge=1, le=1000, description="How many classes to return (at most the model's classes).", examples=[5])
]


def _response(served: ServedModel, answer: Answer, started: float) -> ClassifyResponse:
    return ClassifyResponse(
        **answer.response_fields(served, started=started),
        predictions=[Prediction(**prediction) for prediction in answer.result],
    )


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Classify one image",
    openapi_extra=RAW_IMAGE_BODY,
    description="The image as multipart field `file`, or as the raw request body with its image Content-Type. "
    "Answers the `top_k` most probable classes.",
)
async def classify(
    request: Request,
    classifier: ClassifierDep,
    settings: SettingsDep,
    file: ImageUpload,
    top_k: TopK = 5,
) -> ClassifyResponse:
    started = time.perf_counter()
    (answer,) = await infer(
        request, classifier, [file], settings=settings, batch_form=False,
        make_request=lambda pixels: ClassifyRequest(pixels=pixels, top_k=top_k),
    )  # fmt: skip
    return _response(classifier, answer, started)


@router.post(
    "/classify/batch",
    response_model=list[ClassifyResponse],
    summary="Classify several images",
    description="Up to MAX_FILES images as repeated multipart fields `files`; one answer per image, in order.",
)
async def classify_batch(
    request: Request,
    classifier: ClassifierDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="The images; answers come in the same order.")],
    top_k: TopK = 5,
) -> list[ClassifyResponse]:
    started = time.perf_counter()
    answers = await infer(
        request, classifier, files, settings=settings, batch_form=True,
        make_request=lambda pixels: ClassifyRequest(pixels=pixels, top_k=top_k),
    )  # fmt: skip
    return [_response(classifier, answer, started) for answer in answers]
