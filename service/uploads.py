"""One uploaded file to a prepared model input, off the event loop, with errors naming the file.

The decoded image lives only as long as `prepare` needs it (unless the route draws on it): a queued
request holds the model-sized input. After a large image the freed heap is handed back to the system.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from service.images import check_content_type, decode_image
from service.memory import LARGE_IMAGE_PIXELS, release_free_memory


@dataclass
class DecodedUpload:
    size: tuple[int, int]  # (width, height) as displayed
    prepared: Any  # what the predictor's `prepare` made of it
    decode_ms: float
    image: Image.Image | None = None  # RGB as displayed, kept only for a route that draws on it

    def release_image(self) -> None:
        """Drop the kept image; after a large one, hand the freed heap back (call off the event loop)."""
        self.image = None
        if self.size[0] * self.size[1] >= LARGE_IMAGE_PIXELS:
            release_free_memory()


async def one_file_part(request: Request) -> None:
    """422 for two or more `file` parts in a single-image route (FastAPI would silently keep the last)."""
    parts = len((await request.form()).getlist("file"))  # the form FastAPI already parsed (cached)
    if parts > 1:
        raise HTTPException(
            422, f"file: {parts} parts named 'file'; send one, or several as `files` to the batch route"
        )


def upload_label(upload: UploadFile, index: int | None = None) -> str:
    name = f"file {upload.filename!r}" if upload.filename else "file"
    return name if index is None else f"files[{index}] ({name})"


async def decode_upload(
    upload: UploadFile, *, label: str, max_pixels: int, prepare: Callable[[Image.Image], Any], keep_image: bool = False
) -> DecodedUpload:
    started = time.perf_counter()
    check_content_type(upload.content_type, label=label)
    data = await upload.read()

    def decode_and_prepare() -> DecodedUpload:
        image = decode_image(data, max_pixels=max_pixels, label=label)
        decoded = DecodedUpload(
            size=image.size, prepared=prepare(image), decode_ms=0.0, image=image if keep_image else None
        )
        if not keep_image and image.width * image.height >= LARGE_IMAGE_PIXELS:
            del image
            release_free_memory()
        return decoded

    decoded = await run_in_threadpool(decode_and_prepare)
    decoded.decode_ms = (time.perf_counter() - started) * 1e3
    return decoded
