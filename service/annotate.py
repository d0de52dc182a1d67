"""Draw detections on the image and encode it as PNG or JPEG.

Drawn with PIL in place on the decoded image (the caller's copy, not kept afterwards): no tensor
copies of a full-resolution image, so a 40 M pixel upload costs its own pixels and the encoder's buffer.
"""

import io
from typing import Any

from PIL import Image, ImageDraw

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990")
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg")}


def render_annotated(image: Image.Image, detections: list[dict[str, Any]], *, image_format: str) -> tuple[bytes, str]:
    """Return (encoded bytes, media type); boxes are drawn in pixels of `image`, which is drawn on."""
    draw = ImageDraw.Draw(image)
    line_width = max(2, min(image.size) // 200)
    for detection in detections:
        colour = PALETTE[detection["label"] % len(PALETTE)]
        x1, y1, x2, y2 = detection["box"]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_width)
        draw.text((x1 + line_width, y1 + line_width), f"{detection['name']} {detection['score']:.2f}", fill=colour)
    pil_format, media_type = FORMATS[image_format]
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **({"quality": 90} if pil_format == "JPEG" else {}))
    return buffer.getvalue(), media_type
