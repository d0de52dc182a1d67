"""Headers that keep a browser from misreading or embedding what we serve: nosniff and Referrer-Policy on
every response, and on the page and its static files a Content-Security-Policy the page satisfies."""

from starlette.types import Message, Receive, Scope, Send

from service.middleware import ScopeMiddleware

# The page loads its own script and style sheet, shows the chosen file from a blob: URL and calls the API on
# its own origin; nothing inline, nothing from elsewhere, and no other site may frame it (clickjacking).
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
EVERY_RESPONSE = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


def _is_page(path: str) -> bool:
    return path in ("/", "/favicon.ico") or path.startswith("/static/")


class ResponseHeadersMiddleware(ScopeMiddleware):
    """Adds the headers to every response that passes it (/docs and /redoc, which Swagger UI and ReDoc draw
    with inline scripts, get nosniff and Referrer-Policy but not the page's policy)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        added = EVERY_RESPONSE
        if _is_page(scope["path"]):
            added = [*added, (b"content-security-policy", PAGE_POLICY.encode())]
        names = {name for name, _ in added}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", []) if name not in names]
                message = {**message, "headers": [*headers, *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
