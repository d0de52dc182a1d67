"""One uploaded file (a multipart part or the raw request body) to what its request queues (service/predictors.py),
with errors naming the file. Nothing of it is parsed in the server process: its header and its pixels are read in
decoding processes (service/decode_pool.py), each under DECODE_CPU_S of CPU time, only in IMAGE_FORMATS.

The decoded image lives only as long as `queueable` needs it (unless the route draws on it): a queued request holds
the smaller of the 8-bit source and the model-sized input (service/predictors.py). After a large image the freed heap
is handed back to the system.

A large image (from LARGE_IMAGE_PIXELS up) costs seconds of CPU and hundreds of MB to decode, so it is
decoded by a process of its own at the lowest CPU priority: it takes what the other requests leave and
slows only itself (bench/soak.py measures this). A second large image arriving meanwhile gets a 503 with
Retry-After instead of waiting, which also bounds the memory of large decodes to one image.
"""

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, File, HTTPException, Request, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from detection.decoding import DecodedImage, ImageDecodeError
from service.decode_pool import (
    DecodeBudgetExceeded,
    DecodePool,
    DecodePoolBusy,
    DecodePoolStopped,
    DecoderCrashed,
    MemoryRefused,
)
from service.images import ImageRejected, check_content_type, decode_unless_large, decode_upload_bytes, rejection
from service.memory import LARGE_IMAGE_PIXELS, MemoryBudget, release_free_memory
from service.settings import Settings


class UploadDecoders:
    """The decoding processes of one app: DECODE_WORKERS for every header and image, one more for large images."""

    def __init__(
        self, settings: Settings, *, memory: MemoryBudget | None = None, on_event: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        # the app's one budget (service/app.py): both pools and the inference queues reserve from it
        self.memory = memory or MemoryBudget(settings.image_memory_bytes)
        budgets = {"cpu_budget_s": settings.decode_cpu_s, "memory": self.memory, "on_event": on_event}
        self.pool = DecodePool(workers=settings.decode_workers, **budgets)
        self.large = DecodePool(workers=1, nice=19, **budgets)

    async def start(self) -> None:
        await self.pool.start()
        await self.large.start()

    async def stop(self) -> None:
        await self.pool.stop()
        await self.large.stop()

    async def decode(self, data: bytes, *, label: str) -> DecodedImage:
        """The upload as displayed; ImageRejected (or a 503 when a large image is already being decoded)."""
        settings = self.settings
        job = (data, settings.max_image_pixels, label, settings.image_formats)
        try:
            decoded = await self.pool.run(decode_unless_large, *job, LARGE_IMAGE_PIXELS)
            if isinstance(decoded, DecodedImage):
                return decoded
            return await self.large.run(decode_upload_bytes, *job, wait=False)
        except ImageDecodeError as error:
            raise rejection(error) from error
        except DecodeBudgetExceeded as error:
            raise ImageRejected(
                422, f"{label}: decoding it took over its CPU-time budget (DECODE_CPU_S={settings.decode_cpu_s:g} s)"
            ) from error
        except DecoderCrashed as error:
            raise ImageRejected(400, f"{label} is not a decodable image: {error}") from error
        except MemoryRefused as error:
            if error.too_large:
                raise ImageRejected(
                    413, f"{label} needs {error.nbytes} bytes to decode, over {self.memory.setting}={error.limit}"
                ) from error
            raise HTTPException(
                503,
                f"{label}: the images decoding and waiting hold the memory budget; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        except DecodePoolStopped:
            raise HTTPException(503, f"{label}: the server is shutting down", headers={"Retry-After": "1"}) from None
        except DecodePoolBusy:
            raise HTTPException(
                503, f"{label}: another large image is being decoded; retry shortly", headers={"Retry-After": "1"}
            ) from None


@dataclass
class DecodedUpload:
    size: tuple[int, int]  # (width, height) as displayed
    queued: Any  # what the predictor's `queueable` made of it: what its request holds while it waits
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
    decoders: UploadDecoders,
    queueable: Callable[[DecodedImage], Any],
    keep_image: bool = False,
) -> DecodedUpload:
    started = time.perf_counter()
    check_content_type(upload.content_type, label=label)
    data = await upload.read()
    image = await decoders.decode(data, label=label)
    del data

    def queue_and_release() -> DecodedUpload:
        nonlocal image
        decoded = DecodedUpload(
            size=image.size, queued=queueable(image), decode_ms=0.0, image=image.to_pil() if keep_image else None
        )
        if not keep_image and image.size[0] * image.size[1] >= LARGE_IMAGE_PIXELS:
            # a large image is queued model-sized (its own copy): the pixels must go before the heap goes back
            image = None
            release_free_memory()
        return decoded

    decoded = await run_in_threadpool(queue_and_release)
    decoded.decode_ms = (time.perf_counter() - started) * 1e3
    return decoded
