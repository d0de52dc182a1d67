"""CORS for browser pages on other origins, as CORS_ORIGINS says (default: none, same origin only)."""

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.middleware import ScopeMiddleware
from service.settings import resolve_settings


class SettingsCORSMiddleware(ScopeMiddleware):
    """Starlette's CORSMiddleware with the origins of the app's settings, read at the first request (importing
    the app reads no setting); with no origin set, requests pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self._handler: ASGIApp | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._handler is None:
            origins = resolve_settings(scope["app"]).cors_origins
            self._handler = self.app if not origins else CORSMiddleware(
                self.app,
                allow_origins=origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After", "X-Detections"],
            )  # fmt: skip
        await self._handler(scope, receive, send)
