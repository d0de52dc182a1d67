"""The anchor of bench/service.py: the same detector run per request inside an `async def` route.

No queue, no batching, no worker thread: the forward pass blocks the event loop, as a first FastAPI
handler usually does. Same checkpoint and the same inference rewrites as the service, so the
difference measured is the serving design alone.

    DETECTOR_CHECKPOINT=... python -m bench.loopback bench.service_naive:app_from_environment
"""

import io
import os
from contextlib import asynccontextmanager
from typing import Annotated

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image, ImageOps

from detection import load_detector
from service.loading import use_bf16
from service.settings import Settings


def create_naive_app(detector_path: str, *, optimize: bool, bf16: bool = False) -> FastAPI:
    models = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        detector, _ = load_detector(detector_path)
        if optimize or bf16:
            detector.optimize_for_inference(fold_bn=optimize, channels_last=optimize, bf16=bf16)
        models["detector"] = detector
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/detect")
    async def detect(
        file: Annotated[UploadFile, File()], score_threshold: float = 0.5, max_detections: int = 100
    ) -> dict:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(await file.read()))).convert("RGB")
        (result,) = models["detector"].predict([image], score_threshold=score_threshold, max_detections=max_detections)
        return {
            "image": {"width": image.width, "height": image.height},
            "detections": [
                {"box": box, "score": score, "label": label, "name": name}
                for box, score, label, name in zip(
                    result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist(), result["names"]
                )
            ],
        }

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    return app


def app_from_environment() -> FastAPI:
    """The app for `python -m bench.loopback`: DETECTOR_CHECKPOINT; OPTIMIZE and BF16 read as the service reads
    them (same defaults), so the anchor computes with the service's numerics."""
    settings = Settings()
    bf16 = use_bf16(settings, torch.device("cpu"))
    return create_naive_app(os.environ["DETECTOR_CHECKPOINT"], optimize=settings.optimize, bf16=bf16)
