"""Turn uploaded bytes into an RGB image as displayed, refusing what is not an image or is too large.

The pixel count is read from the header (PIL opens lazily) and checked before anything is decoded,
so a decompression bomb costs a few kilobytes of memory, not gigabytes.
"""

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from detection.images import to_rgb

ACCEPTED_CONTENT_TYPES = ("application/octet-stream",)


class ImageRejected(Exception):
    """An upload we refuse; `status` is the HTTP status to answer with, the message names the file."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


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


def decode_image(data: bytes, *, max_pixels: int, label: str) -> Image.Image:
    """Decode the first frame, apply EXIF orientation, return 8-bit RGB; raises ImageRejected."""
    return decode_opened(open_image(data, max_pixels=max_pixels, label=label), label=label)


def open_image(data: bytes, *, max_pixels: int, label: str) -> Image.Image:
    """The image's header alone (PIL opens lazily: nothing is decoded), its size checked; raises ImageRejected."""
    if not data:
        raise ImageRejected(400, f"{label} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise ImageRejected(400, f"{label} is not an image in a format we read") from error
    except Exception as error:  # a decoder may raise anything (struct.error, NotImplementedError, ...)
        raise decoder_failure(error, label=label) from error

    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(400, f"{label} declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            413, f"{label} is {width}x{height} = {width * height} pixels, over MAX_IMAGE_PIXELS={max_pixels}"
        )
    return image


def decode_opened(image: Image.Image, *, label: str) -> Image.Image:
    """Decode an `open_image` result's first frame, apply EXIF orientation, return 8-bit RGB; raises
    ImageRejected. A source converted to a new RGB image is closed, so its pixels go now."""
    try:
        # No seek: Pillow opens every format at its first frame (a PSD at its composite); seek(0) refused
        # every PSD, whose layers are numbered from 1.
        image.load()
    except Exception as error:
        raise decoder_failure(error, label=label) from error
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size copy
    except Exception as error:
        raise ImageRejected(400, f"{label} has corrupt EXIF metadata ({type(error).__name__}: {error})") from error
    try:
        rgb = to_rgb(image)
    except Exception as error:  # a mode Pillow decodes but cannot convert
        raise decoder_failure(error, label=label) from error
    if rgb is not image:
        image.close()  # the caller may still hold the source (its header), but not its decoded pixels
    return rgb


def decoder_failure(error: Exception, *, label: str) -> ImageRejected:
    """The 4xx for whatever a decoder raised: a user's file is never a 500."""
    reason = f"{type(error).__name__}: {str(error)[:200]}"
    if isinstance(error, (Image.DecompressionBombError, MemoryError)):  # PIL's own ceiling is 2 x its 89 M
        return ImageRejected(413, f"{label} has too many pixels to decode ({reason})")
    if isinstance(error, NotImplementedError):
        return ImageRejected(415, f"{label} uses a variant of its format we cannot decode ({reason})")
    return ImageRejected(400, f"{label} is not a decodable image (truncated or corrupt?): {reason}")
