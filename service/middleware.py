"""The ASGI plumbing our middleware share: wrap the app, handle one scope type, pass every other through."""

from starlette.types import ASGIApp, Receive, Scope, Send


class ScopeMiddleware:
    """Subclasses implement `handle` for scopes of `scope_type` ("http" unless they say otherwise, e.g.
    "lifespan"); every other scope reaches the app untouched."""

    scope_type = "http"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != self.scope_type:
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
