"""CORS for browser pages on other origins, as CORS_ORIGINS says (default: none, same origin only)."""

from fastapi import Request
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_response
from service.middleware import ScopeMiddleware
from service.settings import resolve_settings


class JsonPreflightCORSMiddleware(CORSMiddleware):
    """Starlette's CORSMiddleware, whose refused preflight answers our JSON error (it answers text/plain)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        preflight = scope["method"] == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers
        if not preflight:
            await super().__call__(scope, receive, send)
            return
        response = self.preflight_response(request_headers=headers)
        if response.status_code >= 400:
            refused = response.body.decode().removeprefix("Disallowed CORS ")  # e.g. "origin, headers"
            kept = {name: value for name, value in response.headers.items() if name.startswith("access-control-")}
            detail = (
                f"CORS preflight refused ({refused} not allowed); methods: {', '.join(sorted(self.allow_methods))}; "
                f"headers: {', '.join(sorted(self.allow_headers))}"
            )
            response = error_response(Request(scope), response.status_code, detail, headers=kept)
        await response(scope, receive, send)


class SettingsCORSMiddleware(ScopeMiddleware):
    """CORS with the origins of the app's settings, read at the first request (importing the app reads no
    setting); with no origin set, requests pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self._handler: ASGIApp | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._handler is None:
            origins = resolve_settings(scope["app"]).cors_origins
            self._handler = self.app if not origins else JsonPreflightCORSMiddleware(
                self.app,
                allow_origins=origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After", "X-Detections"],
            )  # fmt: skip
        await self._handler(scope, receive, send)
