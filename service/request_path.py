"""The path every inference route shares: decode the uploads, queue them, wait for the batch results."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, UploadFile

from service.batching import BatchTiming
from service.disconnect import cancelled_on_disconnect
from service.images import ImageRejected
from service.loading import ServedModel
from service.schemas import ImageSize, ModelRef, Timing
from service.settings import Settings
from service.uploads import DecodedUpload, decode_upload, upload_label


@dataclass
class Answer:
    """One image's result and how long each step took."""

    upload: DecodedUpload
    result: Any
    timing: BatchTiming

    def response_fields(self, served: ServedModel, *, started: float) -> dict[str, Any]:
        """What every route's answer for this image holds besides the result itself: the model that
        answered, the image's size and where the time went since `started` (a perf_counter reading)."""
        width, height = self.upload.size
        timing = Timing(
            decode=round(self.upload.decode_ms, 3),
            queue=round(self.timing.queue_ms, 3),
            inference=round(self.timing.inference_ms, 3),
            total=round((time.perf_counter() - started) * 1e3, 3),
            batch_size=self.timing.batch_size,
        )
        return {
            "model": ModelRef(name=served.name, version=served.version),
            "image": ImageSize(width=width, height=height),
            "timing_ms": timing,
        }


async def infer(
    request: Request,
    served: ServedModel,
    uploads: list[UploadFile],
    *,
    settings: Settings,
    make_request: Callable[[Any], Any],
    batch_form: bool,
    keep_images: bool = False,
) -> list[Answer]:
    """Results in upload order; any bad file fails the whole request with an error naming it.
    `keep_images` keeps each decoded image on its answer (for drawing on it). A client that leaves meanwhile
    cancels what is left of its work (ClientDisconnected)."""
    if batch_form and len(uploads) > settings.max_files:
        raise ImageRejected(413, f"{len(uploads)} files in one request, over MAX_FILES={settings.max_files}")
    decoders = request.app.state.service.decoders
    async with cancelled_on_disconnect(request):
        # One file after another: a request's peak memory is one decoded upload (each is at most model-sized
        # once queueable), not all of its files at full resolution at once.
        decoded = [
            await decode_upload(
                upload,
                label=upload_label(upload, index if batch_form else None),
                decoders=decoders,
                queueable=served.predictor.queueable,
                keep_image=keep_images,
            )
            for index, upload in enumerate(uploads)
        ]
        # All queued at once, so they can share one batch. If one is refused (queue full or the memory budget
        # held: 503), or the client leaves, the others are cancelled, and the engine skips cancelled requests
        # instead of computing answers nobody will read.
        submissions = [asyncio.ensure_future(served.engine.submit(make_request(item.queued))) for item in decoded]
        try:
            outcomes = await asyncio.gather(*submissions)
        except BaseException:
            for submission in submissions:
                submission.cancel()
            raise
    return [Answer(upload=item, result=result, timing=timing) for item, (result, timing) in zip(decoded, outcomes)]
