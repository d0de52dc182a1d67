"""The FastAPI application: routers, error handlers, middleware, and the lifespan that loads the models.

`uvicorn service.app:app` and `python -m service` serve it. Importing builds no model: the lifespan
handler loads every checkpoint (or fails naming the file), starts one batching engine per model,
and warms them up in the background while /readyz answers 503.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import torch
from fastapi import FastAPI

from service.body_limit import BodySizeLimitMiddleware
from service.engine import BatchingEngine
from service.errors import install_error_handlers
from service.loading import ModelLoadError, load_served_models, select_device
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.request_id import RequestIdMiddleware
from service.routers import classify, detect, health, metrics, models
from service.settings import Settings, get_settings, resolve_settings
from service.state import ServiceState

log = logging.getLogger("service")

DESCRIPTION = """Object detection (Faster R-CNN on ResNet) and image classification (ResNet, He et al. 2015).

Upload images as multipart field `file` (or `files` for the batch forms). Every error answers
`{"detail": "...", "request_id": "..."}`; every response carries `X-Request-ID` (yours, when sane).
With `API_KEY` set, the inference routes need `Authorization: Bearer <key>` or `X-API-Key: <key>`;
health, readiness, models and metrics stay open.
"""


async def warm_up(state: ServiceState) -> None:
    """One batch through every engine, so the first real request does not pay for lazy initialisation."""
    if state.settings.warmup:
        for role, served in state.models.items():
            try:
                await served.engine.submit(served.predictor.warmup_request())
            except Exception as error:  # reported by /readyz; the models stay unserved
                state.warmup_error = f"{role} warm-up failed: {type(error).__name__}: {error}"
                log.error(state.warmup_error)
                return
    state.ready = True
    log.info("ready: %s on %s", ", ".join(sorted(state.models)), state.device)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = resolve_settings(app)
    try:
        device = select_device(settings.device)
        served_models = await asyncio.to_thread(load_served_models, settings, device)
    except ModelLoadError as error:
        log.error("startup failed: %s", error)
        raise
    service_metrics: ServiceMetrics = app.state.metrics
    for role, served in served_models.items():
        served.engine = BatchingEngine(
            name=role,
            run_batch=served.predictor.run,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_batch_wait_ms / 1e3,
            max_queue=settings.max_queue,
            on_batch=partial(service_metrics.record_batch, role),
            on_queue_depth=service_metrics.queue_depth.labels(model=role).set,
            # torch's thread count belongs to the calling thread (OpenMP): set it in the inference thread itself
            worker_init=partial(torch.set_num_threads, settings.torch_threads) if settings.torch_threads else None,
        )
        await served.engine.start()
    state = ServiceState(settings=settings, device=device, models=served_models)
    app.state.service = state
    warming = asyncio.create_task(warm_up(state))
    try:
        yield
    finally:
        warming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warming
        for served in served_models.values():
            await served.engine.stop()
        del app.state.service


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; `settings` (else `get_settings()`, from the environment) is read when it starts."""
    app = FastAPI(title="resdet", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.state.metrics = ServiceMetrics()
    install_error_handlers(app)
    for router in (health.router, models.router, detect.router, classify.router, metrics.router):
        app.include_router(router)
    # Added last = outermost: metrics also count the 413s the body limit answers.
    app.add_middleware(BodySizeLimitMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost of ours: every response it passes carries the id
    return app


app = create_app()
