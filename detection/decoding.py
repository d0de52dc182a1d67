"""The one image decoder: bytes or a file -> the image as displayed, as plain data (a numpy array and its size).

First frame (Pillow opens every format there; a PSD at its composite), EXIF orientation applied, every
mode to RGB with `detection.pixels`' rules: 8-bit images as uint8, 16-bit, 32-bit and float greyscale
kept wide as float32 in [0, 1]. The pixel count is read from the header and checked before anything is
decoded, so a decompression bomb costs kilobytes. Every failure is one `ImageDecodeError` whose `kind`
says what went wrong; the service maps it to an HTTP status, the predict CLI to an error record.
`decode_image` is a module-level function of picklable arguments and result, so it can run in a
process pool.
"""

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detection.pixels import to_array

DecodeFailure = Literal["empty", "unidentified", "too_many_pixels", "unsupported", "corrupt"]


class ImageDecodeError(Exception):
    """An image we cannot or will not decode; `kind` is one of `DecodeFailure`, the message names the image."""

    def __init__(self, kind: DecodeFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self):  # pickled with both arguments: it crosses from a decoding worker process
        return type(self), (self.kind, self.message)


@dataclass(frozen=True)
class DecodedImage:
    """An image as displayed: RGB [H, W, 3], uint8 for 8-bit sources, float32 in [0, 1] for wider ones."""

    pixels: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL gives it."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes

    def to_pil(self) -> Image.Image:
        """8-bit RGB (wide samples rounded to the nearest level), for drawing and the classifiers' 8-bit resize."""
        pixels = self.pixels
        if pixels.dtype != np.uint8:
            pixels = np.floor(pixels * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(pixels, mode="RGB")


def decode_image(
    source: bytes | str | os.PathLike,
    *,
    max_pixels: int | None = None,
    label: str = "the image",
    formats: Sequence[str] | None = None,
) -> DecodedImage:
    """Decode `source` (the file's bytes or its path); raises ImageDecodeError. `max_pixels` None: no limit but
    PIL's own bomb ceiling. `label` names the image in error messages ("file 'a.jpg'"). `formats`: Pillow's
    names of the formats to read (None: all); another is refused ("unsupported") before its header is parsed."""
    opened = open_image(source, max_pixels=max_pixels, label=label, formats=formats)
    return decode_opened(opened, label=label)


def open_image(
    source: bytes | str | os.PathLike,
    *,
    max_pixels: int | None = None,
    label: str = "the image",
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """The image's header alone (PIL opens lazily: nothing is decoded), its size checked; raises ImageDecodeError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageDecodeError("empty", f"{label} is empty")
        stream = io.BytesIO(source)
    else:
        try:
            # stat before opening: a FIFO would block the open until a writer came, a device read without end
            status = os.stat(source)
        except OSError as error:
            raise ImageDecodeError("corrupt", f"{label} cannot be read ({type(error).__name__}: {error})") from error
        if not stat.S_ISREG(status.st_mode):
            raise ImageDecodeError("unsupported", f"{label} is not a regular file (a FIFO, a device, a folder, ...)")
        if status.st_size == 0:
            raise ImageDecodeError("empty", f"{label} is empty")
        stream = source
    try:
        image = Image.open(stream, formats=formats)
    except UnidentifiedImageError as error:
        other = _format_by_signature(source) if formats is not None else None
        if other is not None and other not in formats:  # an accepted one that did not open is broken, not refused
            raise ImageDecodeError(
                "unsupported",
                f"{label} is not in an accepted format (it looks like {other}); accepted: {', '.join(formats)}",
            ) from error
        accepted = f" (accepted: {', '.join(formats)})" if formats is not None else ""
        raise ImageDecodeError("unidentified", f"{label} is not an image in a format we read{accepted}") from error
    except Exception as error:  # a decoder may raise anything (struct.error, NotImplementedError, ...)
        raise decoder_failure(error, label=label) from error

    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageDecodeError("empty", f"{label} declares an empty image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageDecodeError(
            "too_many_pixels",
            f"{label} is {width}x{height} = {width * height} pixels, over MAX_IMAGE_PIXELS={max_pixels}",
        )
    return image


def _format_by_signature(source: bytes | str | os.PathLike) -> str | None:
    """The format whose signature the first 16 bytes carry (what Image.open reads first); no header is parsed."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        prefix = bytes(source[:16])
    else:
        with open(source, "rb") as handle:
            prefix = handle.read(16)
    Image.init()
    for name, (_factory, accepts) in Image.OPEN.items():
        try:
            if accepts is not None and accepts(prefix):
                return name
        except Exception:  # a signature check that trips on 16 bytes is no match
            continue
    return None


def decode_opened(image: Image.Image, *, label: str = "the image") -> DecodedImage:
    """Decode an `open_image` result's first frame as displayed; raises ImageDecodeError. The PIL image is
    closed afterwards, so its pixels go as soon as the array holds them."""
    try:
        try:
            # No seek: Pillow opens every format at its first frame (a PSD at its composite); seek(0) refused
            # every PSD, whose layers are numbered from 1.
            image.load()
        except Exception as error:
            raise decoder_failure(error, label=label) from error
        try:
            ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size copy
        except Exception as error:
            raise ImageDecodeError(
                "corrupt", f"{label} has corrupt EXIF metadata ({type(error).__name__}: {error})"
            ) from error
        try:
            return DecodedImage(pixels=to_array(image))
        except Exception as error:  # a mode Pillow decodes but cannot convert
            raise decoder_failure(error, label=label) from error
    finally:
        image.close()


def decoder_failure(error: Exception, *, label: str) -> ImageDecodeError:
    """The ImageDecodeError for whatever a decoder raised: a user's file is never an internal error."""
    reason = f"{type(error).__name__}: {str(error)[:200]}"
    if isinstance(error, (Image.DecompressionBombError, MemoryError)):  # PIL's own ceiling is 2 x its 89 M
        return ImageDecodeError("too_many_pixels", f"{label} has too many pixels to decode ({reason})")
    if isinstance(error, NotImplementedError):
        return ImageDecodeError("unsupported", f"{label} uses a variant of its format we cannot decode ({reason})")
    return ImageDecodeError("corrupt", f"{label} is not a decodable image (truncated or corrupt?): {reason}")
