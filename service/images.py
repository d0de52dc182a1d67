"""Turn uploaded bytes into an RGB image as displayed, refusing what is not an image or is too large.

The pixel count is read from the header (PIL opens lazily) and checked before anything is decoded,
so a decompression bomb costs a few kilobytes of memory, not gigabytes.
"""

import io

from PIL import Image, ImageOps, UnidentifiedImageError

# Modes whose samples are wider than 8 bits; PIL's convert("RGB") would clip them, not scale them.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
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
        return to_rgb(image)
    except Exception as error:  # a mode Pillow decodes but cannot convert
        raise decoder_failure(error, label=label) from error


def decoder_failure(error: Exception, *, label: str) -> ImageRejected:
    """The 4xx for whatever a decoder raised: a user's file is never a 500."""
    reason = f"{type(error).__name__}: {str(error)[:200]}"
    if isinstance(error, (Image.DecompressionBombError, MemoryError)):  # PIL's own ceiling is 2 x its 89 M
        return ImageRejected(413, f"{label} has too many pixels to decode ({reason})")
    if isinstance(error, NotImplementedError):
        return ImageRejected(415, f"{label} uses a variant of its format we cannot decode ({reason})")
    return ImageRejected(400, f"{label} is not a decodable image (truncated or corrupt?): {reason}")


def _sample_bits(image: Image.Image) -> int:
    """Bits per sample of a wide-mode image: from the TIFF tag where there is one, else 16."""
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # BitsPerSample
    return int(bits[0] if isinstance(bits, tuple) else bits) if bits else 16


def to_rgb(image: Image.Image) -> Image.Image:
    """Grey, palette, CMYK, alpha (composited on white) and 16-bit images as 8-bit RGB."""
    if image.mode in WIDE_MODES:
        # Samples scale from their real range: 16-bit from 0..65535, a 32-bit integer image (a TIFF's
        # BitsPerSample 32, Pillow's signed "I") from 0..2**31-1, negatives as 0; float images are taken
        # as 0..1. convert("L") clips.
        scale = 255.0 if image.mode == "F" else 255.0 / (2**31 - 1 if _sample_bits(image) == 32 else 65535)
        wide = image if image.mode in ("I", "F") else image.convert("I")
        image = wide.point(lambda value: value * scale + 0.5).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Pasting through the alpha onto white is alpha compositing on an opaque background, without
        # alpha_composite's two extra full-size RGBA images (a 40 M pixel upload: 320 MB fewer).
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    return image if image.mode == "RGB" else image.convert("RGB")
