"""Every error the app shapes is JSON `{"detail": "...", "request_id": "..."}`: handlers and OpenAPI entries.

That includes Starlette's own 404 and 405 and any unexpected exception: a 500 whose traceback goes to
the log under the request id, never to the client.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.batching import EngineBusy, ItemTooLarge
from service.disconnect import ClientDisconnected
from service.images import ImageRejected
from service.request_id import HEADER, request_id_of
from service.schemas import ErrorResponse
from service.settings import resolve_settings

log = logging.getLogger("service")


class ServiceUnavailable(Exception):
    """503: models still warming up, warm-up failed, or not configured; `retry` adds Retry-After."""

    def __init__(self, detail: str, *, retry: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry = retry


def _error(status: int, description: str) -> dict:
    return {status: {"model": ErrorResponse, "description": description}}


INFERENCE_ERRORS = {
    **_error(400, "A file is not a decodable image (empty, truncated, text, HTML, corrupt EXIF, ...)."),
    **_error(401, "API_KEY is set and the request has no valid `Authorization: Bearer` or `X-API-Key`."),
    **_error(404, "?model= names no served model of this kind; the detail lists the ones there are."),
    **_error(413, "The body is over MAX_UPLOAD_BYTES, an image is over MAX_IMAGE_PIXELS, or too many files."),
    **_error(
        415,
        "A file is declared with a content type that is not an image, is in a format outside IMAGE_FORMATS (the "
        "detail lists them), or uses a format variant we cannot decode.",
    ),
    **_error(
        422,
        "A parameter is missing, malformed, out of range or repeated, a single-image route got two `file` parts, or "
        "decoding a file took over its CPU-time budget (DECODE_CPU_S).",
    ),
    **_error(503, "Queue full or models not ready (with Retry-After), or the model is not configured."),
}
NOT_READY_ERROR = _error(503, "Models are not loaded and warmed up yet (with Retry-After).")
UNKNOWN_MODEL_ERROR = _error(404, "No served model has that name; the detail lists the ones there are.")
MALFORMED_REQUEST_ERROR = _error(422, "A parameter is malformed; the detail names it.")
RELOAD_ERRORS = {
    **_error(401, "API_KEY is set and the request has no valid `Authorization: Bearer` or `X-API-Key`."),
    **_error(422, "The model's file no longer loads or warms up; the old version still serves (detail says why)."),
}


def _validation_detail(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_response(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape; also carries X-Request-ID itself (a 500 is sent outside our middleware)."""
    request_id = request_id_of(request.scope)
    return JSONResponse(
        status_code=status,
        content={"detail": detail, "request_id": request_id},
        headers={**(headers or {}), HEADER: request_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    def retry_after(request: Request) -> dict[str, str]:
        return {"Retry-After": str(resolve_settings(request.app).retry_after_s)}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, _validation_detail(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # 404, 405 (with Allow), 401 (with WWW-Authenticate), ...: Starlette's status and headers, our shape.
        return error_response(request, error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(ImageRejected)
    async def rejected_image(request: Request, error: ImageRejected) -> JSONResponse:
        return error_response(request, error.status, error.detail)

    @app.exception_handler(ClientDisconnected)
    @app.exception_handler(ClientDisconnect)  # Starlette's, raised reading a body whose client has gone
    async def client_left(request: Request, error: Exception) -> JSONResponse:
        # nginx's 499: sent to a closed connection, read by no one; /metrics counts it. Not an error of ours: no
        # traceback, which a client leaving mid-upload over and over would otherwise write to the log each time.
        return error_response(request, 499, "the client closed the connection")

    @app.exception_handler(EngineBusy)
    async def busy(request: Request, error: EngineBusy) -> JSONResponse:
        return error_response(request, 503, str(error), headers=retry_after(request))

    @app.exception_handler(ItemTooLarge)
    async def too_large_to_queue(request: Request, error: ItemTooLarge) -> JSONResponse:
        return error_response(request, 413, str(error))  # names the setting

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, error: ServiceUnavailable) -> JSONResponse:
        return error_response(request, 503, error.detail, headers=retry_after(request) if error.retry else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        request_id = request_id_of(request.scope)
        log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=error)
        return error_response(request, 500, f"internal error; quote request id {request_id} when reporting it")
