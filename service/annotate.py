"""Draw detections on the image and encode it as PNG or JPEG."""

import io
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990")
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg")}


def render_annotated(image: Image.Image, detections: list[dict[str, Any]], *, image_format: str) -> tuple[bytes, str]:
    """Return (encoded bytes, media type); boxes are drawn in pixels of `image`."""
    pixels = F.pil_to_tensor(image)
    if detections:
        boxes = torch.tensor([detection["box"] for detection in detections], dtype=torch.float32)
        pixels = draw_bounding_boxes(
            pixels,
            boxes,
            labels=[f"{detection['name']} {detection['score']:.2f}" for detection in detections],
            colors=[PALETTE[detection["label"] % len(PALETTE)] for detection in detections],
            width=max(2, min(image.size) // 200),
        )
    pil_format, media_type = FORMATS[image_format]
    buffer = io.BytesIO()
    F.to_pil_image(pixels).save(buffer, format=pil_format, **({"quality": 90} if pil_format == "JPEG" else {}))
    return buffer.getvalue(), media_type
