"""The FastAPI application: routers, error handlers, middleware, and the lifespan that loads the models.

`uvicorn service.app:app` and `python -m service` serve it. Importing builds no model: the lifespan
handler loads every checkpoint (or fails naming the file), starts one batching engine per model,
and warms them up in the background while /readyz answers 503; with RELOAD_POLL_S set it also
watches the checkpoint files and reloads a replaced one (service/registry.py).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import Message, Receive, Scope, Send

from service.body_limit import BodySizeLimitMiddleware
from service.cors import SettingsCORSMiddleware
from service.errors import install_error_handlers
from service.form_declared_image import FormDeclaredImageMiddleware
from service.loading import ModelLoadError, select_device
from service.memory import MemoryBudget
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.middleware import ScopeMiddleware
from service.openapi import install_openapi
from service.registry import ModelRegistry
from service.request_id import RequestIdMiddleware
from service.response_headers import ResponseHeadersMiddleware
from service.routers import classify, detect, health, metrics, models
from service.routers.page import install_page
from service.settings import Settings, resolve_settings
from service.state import ServiceState
from service.uploads import UploadDecoders

log = logging.getLogger("service")

DESCRIPTION = """Object detection (Faster R-CNN on ResNet) and image classification (ResNet, He et al. 2015).

Upload images as multipart field `file` (or `files` for the batch forms), or send one image as the raw
request body with its Content-Type (`curl --data-binary @bus.jpg -H 'Content-Type: image/jpeg'`). The
detection routes take `score_threshold`, `max_detections`, `iou_threshold`, `classes`, `box_format` and
`normalized`; a query parameter a route does not take is a 422 naming it. Every error answers
`{"detail": "...", "request_id": "..."}`; every response carries `X-Request-ID` (yours, when sane).
With `API_KEY` set, the inference routes need `Authorization: Bearer <key>` or `X-API-Key: <key>`;
health, readiness, models and metrics stay open.
"""


WARMUP_ERROR_CHARS = 1000  # of a failed warm-up's first line, said on /readyz (the rest is in the log)


async def warm_up(state: ServiceState) -> None:
    """One batch through every engine, so the first real request does not pay for lazy initialisation."""
    for name, slot in state.registry.slots.items():
        state.warming = slot.served.pending()
        try:
            await state.registry.warm_up(slot.served)
        except Exception as error:  # reported by /readyz; the models stay unserved
            failed = f"{slot.served.role} {name} warm-up failed: {type(error).__name__}"
            # Clients get the first line (a runtime's error can run to pages of C++ source locations); the log
            # gets all of it.
            first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
            state.warmup_error = f"{failed}: {first[:WARMUP_ERROR_CHARS]}" if first else failed
            log.error("%s: %s", failed, error)
            return
    state.ready, state.warming = True, None
    log.info("ready: %s on %s", ", ".join(sorted(state.registry.slots)), state.device)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = resolve_settings(app)
    try:
        device = select_device(settings.device)
        memory = MemoryBudget(settings.image_memory_bytes)  # one budget: decodes and inference queues alike
        registry = ModelRegistry(settings=settings, device=device, metrics=app.state.metrics, memory=memory)
        await registry.start()
    except ModelLoadError as error:
        log.error("startup failed: %s", error)
        app.state.startup_error = str(error)  # logged in one line: QuietStartupFailure drops the traceback
        raise
    metrics: ServiceMetrics = app.state.metrics
    decoders = UploadDecoders(settings, memory=memory, on_event=metrics.record_decode_event)
    metrics.image_memory_reserved.set_function(lambda: memory.used)
    try:
        await decoders.start()
    except BaseException:
        await registry.stop()
        raise
    state = ServiceState(settings=settings, device=device, registry=registry, decoders=decoders)
    app.state.service = state
    background = [asyncio.create_task(warm_up(state))]
    if settings.reload_poll_s > 0:
        background.append(asyncio.create_task(registry.watch(settings.reload_poll_s), name="checkpoint-watch"))
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await registry.stop()
        await decoders.stop()
        del app.state.service


class QuietStartupFailure(ScopeMiddleware):
    """A model that cannot be served is a user error, already logged in one line by the lifespan: Starlette
    would also hand uvicorn the whole traceback to print, for a file in the wrong format."""

    scope_type = "lifespan"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_without_traceback(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and getattr(scope["app"].state, "startup_error", None):
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, send_without_traceback)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app running with `settings`; without them, the environment's (`get_settings()`) when it starts."""
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the package's copy, not from a CDN,
    # so they work in an air-gapped deployment.
    app = FastAPIOffline(title="resdet", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings  # read back by resolve_settings(app)
    app.state.metrics = ServiceMetrics()
    install_error_handlers(app)
    for router in (health.router, models.router, detect.router, classify.router, metrics.router):
        app.include_router(router)
    install_page(app)
    install_openapi(app)
    # Added last = outermost: metrics also count the 413s the body limit answers.
    # Innermost: re-declares an image sent as a form before FastAPI parses it (the body limit counts first).
    app.add_middleware(FormDeclaredImageMiddleware)
    app.add_middleware(BodySizeLimitMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Errors (413 from the body limit, 401, 503) pass CORS too, so a page on another origin can read their detail.
    app.add_middleware(SettingsCORSMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost of ours: every response carries the id, preflights too
    app.add_middleware(ResponseHeadersMiddleware)  # refused preflights included
    app.add_middleware(QuietStartupFailure)
    return app


app = create_app()
