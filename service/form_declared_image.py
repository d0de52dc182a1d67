"""Serve an image body that arrives declared as a form: `curl --data-binary @bus.jpg` without `-H
'Content-Type: ...'` sends application/x-www-form-urlencoded, and FastAPI would parse the image's bytes
as form fields (a 400 "Too many fields" for a photograph). Such a body whose first bytes are an image
signature is passed on as application/octet-stream, which the routes decode by sniffing, at any size.
"""

from starlette.types import Message, Receive, Scope, Send

from service.middleware import ScopeMiddleware

FORM_MEDIA_TYPE = b"application/x-www-form-urlencoded"
# The signatures of the formats service/images.py decodes; a form body never starts with these bytes.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"BM",  # BMP
    b"8BPS",  # PSD
)
SNIFFED_BYTES = 12  # enough for every signature and WebP's "RIFF....WEBP"


def starts_like_an_image(head: bytes) -> bool:
    """Whether `head` (the body's first bytes) opens one of the image formats we decode."""
    return head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


class FormDeclaredImageMiddleware(ScopeMiddleware):
    """Reads a form-declared body's first bytes, re-declares an image as application/octet-stream, and
    hands the app every message it read, unchanged and in order."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-type", b"")
        if declared.split(b";", 1)[0].strip().lower() != FORM_MEDIA_TYPE:
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        head = b""
        while len(head) < SNIFFED_BYTES:
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            head += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if starts_like_an_image(head):
            headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/octet-stream")]}

        async def replay_then_receive() -> Message:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay_then_receive, send)
