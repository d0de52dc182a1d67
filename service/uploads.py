"""One uploaded file (a multipart part or the raw request body) to a prepared model input, off the event loop,
with errors naming the file.

The decoded image lives only as long as `prepare` needs it (unless the route draws on it): a queued
request holds the model-sized input. After a large image the freed heap is handed back to the system.

A large image (from LARGE_IMAGE_PIXELS up) costs seconds of CPU and hundreds of MB to decode, so one
decodes at a time, in a thread of the lowest CPU priority: it takes what the other requests leave and
slows only itself (bench/soak.py measures this). A second large image arriving meanwhile gets a 503 with
Retry-After instead of waiting, which also bounds the memory of large decodes to one image.
"""

import asyncio
import io
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, File, HTTPException, Request, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from detection.decoding import DecodedImage, ImageDecodeError, decode_opened, open_image
from service.images import ImageRejected, check_content_type, rejection
from service.memory import LARGE_IMAGE_PIXELS, release_free_memory


def _lowest_cpu_priority() -> None:
    try:  # Linux gives each thread its own nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # elsewhere the large image just runs at normal priority
        pass


# Threads start on first use, so importing this module stays free of side effects.
_large_image_decoder = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="large-image", initializer=_lowest_cpu_priority
)
large_image_slot = threading.BoundedSemaphore(1)


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


RAW_BODY_HINT = (
    "send the image as multipart field `file`, or as the request body with its Content-Type (e.g. image/jpeg)"
)


async def image_upload(
    request: Request,
    file: Annotated[
        UploadFile | None,
        File(
            description="The image (JPEG, PNG, WebP, BMP, GIF, TIFF, ...). Or send no form at all: the image "
            "itself as the request body, with its image Content-Type (`curl --data-binary @bus.jpg "
            "-H 'Content-Type: image/jpeg'`).",
        ),
    ] = None,
) -> UploadFile:
    """The one image of a single-image route: the multipart part `file`, or the raw request body.

    A raw body (as TorchServe and Triton clients send) goes through the same limits: MAX_UPLOAD_BYTES
    as it arrives, its declared type (415 when not an image), MAX_IMAGE_PIXELS when decoded.
    """
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        parts = len((await request.form()).getlist("file"))  # the form FastAPI already parsed (cached)
        if parts > 1:
            raise HTTPException(
                422, f"file: {parts} parts named 'file'; send one, or several as `files` to the batch route"
            )
        if file is None:
            raise HTTPException(422, f"file: no part named 'file' in the form; {RAW_BODY_HINT}")
        return file
    # curl --data-binary without -H 'Content-Type: ...' declares a form; an image body was re-declared by
    # service/form_declared_image.py, so what still arrives as a form is not an image.
    if media_type == "application/x-www-form-urlencoded":
        raise ImageRejected(
            415, "the body is declared as application/x-www-form-urlencoded, not an image: "
            f"{RAW_BODY_HINT} (curl: add -H 'Content-Type: image/jpeg')",
        )  # fmt: skip
    check_content_type(content_type, label="the request body")
    body = await request.body()
    if not body:
        raise HTTPException(422, f"file: no image in the request; {RAW_BODY_HINT}")
    return UploadFile(file=io.BytesIO(body), size=len(body), headers=Headers({"content-type": content_type}))


ImageUpload = Annotated[UploadFile, Depends(image_upload)]
# A single-image route's OpenAPI `openapi_extra`: the raw body beside the multipart form.
RAW_IMAGE_BODY = {
    "requestBody": {
        "content": {"image/*": {"schema": {"type": "string", "format": "binary", "description": "The image itself."}}}
    }
}


def upload_label(upload: UploadFile, index: int | None = None) -> str:
    name = f"file {upload.filename!r}" if upload.filename else "file"
    return name if index is None else f"files[{index}] ({name})"


async def decode_upload(
    upload: UploadFile,
    *,
    label: str,
    max_pixels: int,
    prepare: Callable[[DecodedImage], Any],
    keep_image: bool = False,
) -> DecodedUpload:
    started = time.perf_counter()
    check_content_type(upload.content_type, label=label)
    data = await upload.read()

    # The header, read once here (nothing decoded yet): its size picks the thread below, whose decode goes on from it.
    try:
        opened = open_image(data, max_pixels=max_pixels, label=label)
    except ImageDecodeError as error:
        raise rejection(error) from error
    large = opened.width * opened.height >= LARGE_IMAGE_PIXELS

    def decode_and_prepare() -> DecodedUpload:
        try:
            image = decode_opened(opened, label=label)  # closes `opened`: its pixels live on in `image` alone
        except ImageDecodeError as error:
            raise rejection(error) from error
        prepared = prepare(image)
        decoded = DecodedUpload(
            size=image.size, prepared=prepared, decode_ms=0.0, image=image.to_pil() if keep_image else None
        )
        if not keep_image and large:
            del image  # what prepare made is its own copy (a resize): the pixels must be gone before the heap goes back
            release_free_memory()
        return decoded

    if large:
        if not large_image_slot.acquire(blocking=False):
            raise HTTPException(
                503, f"{label}: another large image is being decoded; retry shortly", headers={"Retry-After": "1"}
            )
        try:
            decoded = await asyncio.wrap_future(_large_image_decoder.submit(decode_and_prepare))
        finally:
            large_image_slot.release()
    else:
        decoded = await run_in_threadpool(decode_and_prepare)
    decoded.decode_ms = (time.perf_counter() - started) * 1e3
    return decoded
