"""Encode the image of /detect/annotated: the detections drawn by detection.annotate, as PNG or JPEG.

Drawn in place on the decoded image (the caller's copy, not kept afterwards): no copy of a full-resolution
image, so a 40 M pixel upload costs its own pixels and the encoder's buffer.
"""

import io
from typing import Any

from PIL import Image

from detection.annotate import draw_on_image

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg")}


def render_annotated(image: Image.Image, detections: list[dict[str, Any]], *, image_format: str) -> tuple[bytes, str]:
    """Return (encoded bytes, media type); boxes are drawn in pixels of `image`, which is drawn on."""
    draw_on_image(image, detections)
    pil_format, media_type = FORMATS[image_format]
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **({"quality": 90} if pil_format == "JPEG" else {}))
    return buffer.getvalue(), media_type
