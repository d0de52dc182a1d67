"""Upload checks of the service's own: the declared content type, and the HTTP status of each way decoding fails.

Decoding itself is `detection.decoding.decode_image`, the one decoder the predict CLI uses too: it reads the
pixel count from the header and checks it before anything is decoded, so a decompression bomb costs a few
kilobytes of memory, not gigabytes.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from detection.decoding import DecodedImage, DecodeFailure, ImageDecodeError, decode_opened, open_image
from service.decode_pool import reserve_memory

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


# --------------------------------------------------------------- jobs of the decoding processes (decode_pool)


@dataclass(frozen=True)
class ImageHeader:
    """What an upload's header says, before anything is decoded."""

    width: int
    height: int
    wide: bool  # 16-bit, 32-bit or float samples: decoded as float32 RGB, four times the bytes of 8-bit

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_bytes(self) -> int:
        """A bound on what its decode holds at once in the decoding process: the source image (at most 4 samples
        of 4 bytes a pixel), the RGB array (3 bytes a pixel, 12 as float32) and its pickled copy for the server."""
        return self.pixels * (16 + 2 * (12 if self.wide else 3))


def _limit_pillow(max_pixels: int) -> None:
    """Pillow's own bomb check, run on every frame it opens, at our limit too (it refuses over twice its
    MAX_IMAGE_PIXELS). Only in a decoding process, which decodes uploads alone: the global is ours to set."""
    Image.MAX_IMAGE_PIXELS = max_pixels / 2


def _header(image: Image.Image) -> ImageHeader:
    return ImageHeader(width=image.width, height=image.height, wide=image.mode in ("I", "F") or ";16" in image.mode)


def decode_upload_bytes(data: bytes, max_pixels: int, label: str, formats: Sequence[str]) -> DecodedImage:
    """The upload decoded as displayed."""
    _limit_pillow(max_pixels)
    image = open_image(data, max_pixels=max_pixels, label=label, formats=formats)
    reserve_memory(_header(image).decode_bytes)
    return decode_opened(image, label=label)


def decode_unless_large(
    data: bytes, max_pixels: int, label: str, formats: Sequence[str], large_pixels: int
) -> DecodedImage | ImageHeader:
    """The upload decoded, in one round trip for the usual upload; from `large_pixels` up, only its header,
    for the server to hand it to the large-image worker."""
    _limit_pillow(max_pixels)
    image = open_image(data, max_pixels=max_pixels, label=label, formats=formats)
    if image.width * image.height >= large_pixels:
        image.close()
        return _header(image)
    reserve_memory(_header(image).decode_bytes)
    return decode_opened(image, label=label)
