"""Every request gets an id, answered in X-Request-ID and in every error body, so a log line and a report meet.

A client's own X-Request-ID is kept when it is sane (1 to 64 letters, digits, `.`, `_`, `-`); anything
else (too long, spaces, control characters) is replaced by a fresh one, so it cannot forge log lines.
"""

import re
import uuid

from starlette.types import Message, Receive, Scope, Send

from service.middleware import ScopeMiddleware

HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_of(scope: Scope) -> str:
    """The id `RequestIdMiddleware` gave this request (a fresh one if it did not run)."""
    return scope.setdefault("state", {}).setdefault("request_id", uuid.uuid4().hex)


class RequestIdMiddleware(ScopeMiddleware):
    """Outermost of our middleware: picks the id and adds the header to every response that passes it."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"")
        offered = offered.decode("latin-1")
        chosen = offered if SANE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = chosen

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", []) if name != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", chosen.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)
