"""Upload checks of the service's own: the declared content type, and the HTTP status of each way decoding fails.

Decoding itself is `detection.decoding.decode_image`, the one decoder the predict CLI uses too: it reads the
pixel count from the header and checks it before anything is decoded, so a decompression bomb costs a few
kilobytes of memory, not gigabytes.
"""

from detection.decoding import DecodeFailure, ImageDecodeError

ACCEPTED_CONTENT_TYPES = ("application/octet-stream",)

# The answer to each `ImageDecodeError.kind`: a user's file is never a 500.
DECODE_STATUS: dict[DecodeFailure, int] = {
    "empty": 400,
    "unidentified": 400,
    "corrupt": 400,
    "too_many_pixels": 413,
    "unsupported": 415,
}


class ImageRejected(Exception):
    """An upload we refuse; `status` is the HTTP status to answer with, the message names the file."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def rejection(error: ImageDecodeError) -> ImageRejected:
    """The HTTP answer to an image the decoder refused; the message already names the file."""
    return ImageRejected(DECODE_STATUS[error.kind], error.message)


def check_content_type(content_type: str | None, *, label: str) -> None:
    """415 for a declared type that is not an image; no declaration or octet-stream is sniffed instead."""
    if not content_type:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type.startswith("image/") or media_type in ACCEPTED_CONTENT_TYPES:
        return
    raise ImageRejected(
        415, f"{label} is declared as {media_type!r}, not an image (image/* or application/octet-stream)"
    )
