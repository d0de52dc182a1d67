"""Prometheus metrics of one app (its own registry, so several apps in one process do not collide).

Every label value comes from a fixed set, so no client can grow /metrics: methods outside the
standard ones count as "other", requests that match no route as "unmatched".
"""

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware import ScopeMiddleware

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
UNMATCHED_ROUTE = "unmatched"


class ServiceMetrics:
    """Requests by route and status, latency, batch sizes, inference time, queue depth, and the process's
    resident memory, CPU time and open files (prometheus_client's process collector)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, _cpu_seconds_total, _open_fds
        self.requests = Counter(
            "resdet_http_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "resdet_http_request_duration_seconds", "Time from request start to response end, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "resdet_batch_size", "Images per forward pass.", ["model"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference_seconds = Histogram(
            "resdet_inference_duration_seconds", "Forward pass time per batch.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_files_skipped = Counter(
            "resdet_model_files_skipped", "Checkpoint files left unserved (at start-up, reload or watch), by reason: "
            "symlink_loop, not_a_regular_file, unreadable, does_not_load.", ["reason"], registry=self.registry,
        )  # fmt: skip
        self.cancelled_work = Counter(
            "resdet_cancelled_work", "Work dropped because its client left: decode_queued (never started), "
            "decode_running (its process killed), inference_queued (images never run through a model).",
            ["stage"], registry=self.registry,
        )  # fmt: skip
        self.decode_workers_replaced = Counter(
            "resdet_decode_workers_replaced", "Decoding processes killed and replaced: over_budget (DECODE_CPU_S), "
            "crashed (died on a file), cancelled (its client left).", ["reason"], registry=self.registry,
        )  # fmt: skip
        self.image_memory_reserved = Gauge(
            "resdet_image_memory_reserved_bytes", "Bytes the decodes in flight and the images waiting for inference "
            "have reserved (IMAGE_MEMORY_BYTES).", registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "resdet_queue_depth", "Images waiting for inference.", ["model"], registry=self.registry
        )

    def record_decode_event(self, kind: str) -> None:
        """What service.decode_pool reports: cancelled jobs and the workers it replaced."""
        if kind.startswith("cancelled_"):
            self.cancelled_work.labels(stage=kind.replace("cancelled_", "decode_")).inc()
        if kind in ("over_budget", "crashed", "cancelled_running"):
            self.decode_workers_replaced.labels(reason=kind.replace("_running", "")).inc()

    def record_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model=model).observe(size)
        self.inference_seconds.labels(model=model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware(ScopeMiddleware):
    """Counts and times every HTTP request; labels by route template so ids in paths cannot explode them."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)  # a template of our own routes
            method = scope["method"] if scope["method"] in STANDARD_METHODS else "other"
            self.metrics.requests.labels(route=route, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)
