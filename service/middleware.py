"""The ASGI plumbing our middleware share: wrap the app, pass every scope that is not HTTP (lifespan) through."""

from starlette.types import ASGIApp, Receive, Scope, Send


class HTTPMiddleware:
    """Subclasses implement `handle` for HTTP requests; everything else reaches the app untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
