"""Refuse request bodies over MAX_UPLOAD_BYTES with a JSON 413, counting bytes as they arrive.

A declared Content-Length over the limit is refused before the body is read; a chunked body is cut
off at the first byte over it. FastAPI turns a failing read into its own 400, so the response the
app starts after the cut is replaced by ours.
"""

import json

from starlette.types import Message, Receive, Scope, Send

from service.middleware import ScopeMiddleware
from service.request_id import request_id_of
from service.settings import resolve_settings


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware(ScopeMiddleware):
    """ASGI middleware reading the limit from the app's settings on each request."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = resolve_settings(scope["app"]).max_upload_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, limit, request_id=request_id_of(scope))
            return

        received = 0
        exceeded = False

        async def receive_within_limit() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def send_unless_exceeded(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, receive_within_limit, send_unless_exceeded)
        except _BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await _send_413(send, limit, request_id=request_id_of(scope))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int, *, request_id: str) -> None:
    detail = f"request body is over MAX_UPLOAD_BYTES={limit} bytes"
    body = json.dumps({"detail": detail, "request_id": request_id}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
