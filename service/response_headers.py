"""Headers that keep a browser from misreading or embedding what we serve: nosniff and Referrer-Policy on
every response, on the page and its static files a Content-Security-Policy the page satisfies, and on /docs and
/redoc one that Swagger UI and ReDoc (served from the app, no CDN: fastapi-offline) work under."""

import base64
import hashlib
import re

from starlette.types import Message, Receive, Scope, Send

from service.middleware import ScopeMiddleware

# The page loads its own script and style sheet, shows the chosen file from a blob: URL and calls the API on
# its own origin; nothing inline, nothing from elsewhere, and no other site may frame it (clickjacking).
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc: their scripts and styles from the app itself, plus the page's own inline script by its hash
# (computed from the page as served, so a root path or title in it cannot break it). Their styles are injected at
# run time (ReDoc's styled-components), which only 'unsafe-inline' admits; images are data: URLs; ReDoc draws in
# a blob: worker. "Try it out" calls the API on this origin only.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; worker-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")
EVERY_RESPONSE = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def _is_page(path: str) -> bool:
    return path in ("/", "/favicon.ico") or path.startswith("/static/")


def docs_policy(html: bytes) -> str:
    """DOCS_POLICY admitting exactly the inline scripts of `html` (CSP's 'sha256-...' of each script's text)."""
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(html)
    ]
    return DOCS_POLICY.format(scripts=" ".join(hashes)).replace("'self' ;", "'self';")


def _with_headers(start: Message, added: list[tuple[bytes, bytes]]) -> Message:
    """`start` (http.response.start) with `added`, replacing any header of the same name."""
    names = {name for name, _ in added}
    headers = [(name, value) for name, value in start.get("headers", []) if name not in names]
    return {**start, "headers": [*headers, *added]}


class ResponseHeadersMiddleware(ScopeMiddleware):
    """Adds the headers to every response that passes it: the page's policy to the page, DOCS_POLICY to the docs."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in DOCS_PATHS:
            await self.app(scope, receive, self._docs_sender(send))
            return
        added = EVERY_RESPONSE
        if _is_page(scope["path"]):
            added = [*added, (b"content-security-policy", PAGE_POLICY.encode())]

        async def send_with_headers(message: Message) -> None:
            await send(_with_headers(message, added) if message["type"] == "http.response.start" else message)

        await self.app(scope, receive, send_with_headers)

    def _docs_sender(self, send: Send) -> Send:
        """Hold a docs page (about 1 KB) until its body is whole, then send it with the policy its scripts need."""
        held: list[Message] = []

        async def send_with_policy(message: Message) -> None:
            held.append(message)
            if message["type"] == "http.response.start" or message.get("more_body", False):
                return
            start, *body = held
            policy = docs_policy(b"".join(part.get("body", b"") for part in body))
            await send(_with_headers(start, [*EVERY_RESPONSE, (b"content-security-policy", policy.encode())]))
            for part in body:
                await send(part)

        return send_with_policy
