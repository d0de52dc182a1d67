"""One uploaded file to a prepared model input, off the event loop, with errors naming the file."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from service.images import check_content_type, decode_image


@dataclass
class DecodedUpload:
    image: Image.Image  # RGB as displayed (kept for drawing the annotated answer)
    prepared: Any  # what the predictor's `prepare` made of it
    decode_ms: float


def upload_label(upload: UploadFile, index: int | None = None) -> str:
    name = f"file {upload.filename!r}" if upload.filename else "file"
    return name if index is None else f"files[{index}] ({name})"


async def decode_upload(
    upload: UploadFile, *, label: str, max_pixels: int, prepare: Callable[[Image.Image], Any]
) -> DecodedUpload:
    started = time.perf_counter()
    check_content_type(upload.content_type, label=label)
    data = await upload.read()

    def decode_and_prepare() -> tuple[Image.Image, Any]:
        image = decode_image(data, max_pixels=max_pixels, label=label)
        return image, prepare(image)

    image, prepared = await run_in_threadpool(decode_and_prepare)
    return DecodedUpload(image=image, prepared=prepared, decode_ms=(time.perf_counter() - started) * 1e3)
