"""Error statuses as JSON `{"detail": "..."}`: handlers for our exceptions and their OpenAPI entries."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.engine import EngineBusy
from service.images import ImageRejected
from service.schemas import ErrorResponse
from service.settings import resolve_settings


class ServiceUnavailable(Exception):
    """503: models still warming up, warm-up failed, or not configured; `retry` adds Retry-After."""

    def __init__(self, detail: str, *, retry: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry = retry


def _error(status: int, description: str) -> dict:
    return {status: {"model": ErrorResponse, "description": description}}


INFERENCE_ERRORS = {
    **_error(400, "A file is not a decodable image (empty, truncated, text, HTML, ...)."),
    **_error(401, "API_KEY is set and the request has no valid `Authorization: Bearer` or `X-API-Key`."),
    **_error(413, "The body is over MAX_UPLOAD_BYTES, an image is over MAX_IMAGE_PIXELS, or too many files."),
    **_error(415, "A file is declared with a content type that is not an image."),
    **_error(422, "A parameter is missing or out of range."),
    **_error(503, "Queue full or models not ready (with Retry-After), or the model is not configured."),
}
NOT_READY_ERROR = _error(503, "Models are not loaded and warmed up yet (with Retry-After).")


def _validation_detail(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    def retry_after(request: Request) -> dict[str, str]:
        return {"Retry-After": str(resolve_settings(request.app).retry_after_s)}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_detail(error)})

    @app.exception_handler(ImageRejected)
    async def rejected_image(request: Request, error: ImageRejected) -> JSONResponse:
        return JSONResponse(status_code=error.status, content={"detail": error.detail})

    @app.exception_handler(EngineBusy)
    async def busy(request: Request, error: EngineBusy) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(error)}, headers=retry_after(request))

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, error: ServiceUnavailable) -> JSONResponse:
        headers = retry_after(request) if error.retry else None
        return JSONResponse(status_code=503, content={"detail": error.detail}, headers=headers)
