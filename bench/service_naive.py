"""The anchor of bench/service.py: the same detector run per request inside an `async def` route.

No queue, no batching, no worker thread: the forward pass blocks the event loop, as a first FastAPI
handler usually does. Same checkpoint and the same inference rewrites as the service, so the
difference measured is the serving design alone.

    DETECTOR_CHECKPOINT=... PORT=8010 python -m bench.service_naive
"""

import io
import os
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image, ImageOps

from detection import load_detector


def create_naive_app(detector_path: str, *, optimize: bool) -> FastAPI:
    models = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        detector, _ = load_detector(detector_path)
        if optimize:
            detector.optimize_for_inference()
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


if __name__ == "__main__":
    app = create_naive_app(os.environ["DETECTOR_CHECKPOINT"], optimize=os.environ.get("OPTIMIZE", "1") == "1")
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8010")), log_level="warning")
