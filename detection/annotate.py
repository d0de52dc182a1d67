"""Draw detections (the JSON records of `python -m detection.predict` and the service) onto an image.

The one drawing used by `detection.predict --save-annotated` and the service's /detect/annotated: boxes in a
colour fixed per class, and above each a label "name score" on a filled background, in a font scaled to the
image so that it reads the same on a 100-pixel thumbnail and a 4000-pixel photo.

Not torchvision.utils.draw_bounding_boxes (torchvision 0.29), which does the rest of this job: it scales a label
only with a TrueType font file given by path (without one, PIL's fixed default font ignores `font_size`, and no
such file ships with the project or every base image); it writes each label inside its box's top-left corner
and draws box and label in one loop, so a later box crosses an earlier label; and it converts the tensor to a
PIL image and back, two copies of the picture, where the service draws on the decoded upload itself (a 40 M
pixel upload would cost another 240 MB: docs/SERVING.md, "Memory, measured").
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# The web page (service/static/page.js) uses the same colours; tests/test_page.py checks they match.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990")
MIN_FONT_PX = 12  # below this a label stops being readable, whatever the image


def class_colour(label: int) -> str:
    """The colour of a class: the same label always gets the same colour."""
    return PALETTE[label % len(PALETTE)]


def label_font_size(width: int, height: int) -> int:
    """Label height in pixels: 1/40 of the shorter side (about 20 px on a 800-pixel photo), at least MIN_FONT_PX."""
    return max(MIN_FONT_PX, round(min(width, height) / 40))


def _text_colour(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[index : index + 2], 16) for index in (1, 3, 5))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else "white"


def draw_on_image(image: Image.Image, detections: Sequence[dict[str, Any]]) -> Image.Image:
    """Draw each detection's box and label on the RGB `image` itself (no copy of a large image) and return it;
    boxes are in pixels of `image`."""
    if not detections:
        return image
    width, height = image.size
    draw = ImageDraw.Draw(image)
    line = max(2, round(min(width, height) / 250))
    font = ImageFont.load_default(size=label_font_size(width, height))
    for detection in detections:
        draw.rectangle([round(value) for value in detection["box"]], outline=class_colour(detection["label"]),
                       width=line)  # fmt: skip
    # Labels after every box, so no box is drawn across another's label; lowest score first, so where labels
    # overlap the higher-scoring one is on top (detections come highest first).
    for detection in reversed(detections):
        colour = class_colour(detection["label"])
        text = f"{detection['name']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, (bottom - top) // 4)
        label_width, label_height = right - left + 2 * pad, bottom - top + 2 * pad
        x1, y1 = detection["box"][0], detection["box"][1]
        # Above the box when there is room, else inside its top edge; never past the right edge.
        y = y1 - label_height if y1 - label_height >= 0 else y1
        x = max(0, min(x1, width - label_width))
        draw.rectangle([x, y, x + label_width, y + label_height], fill=colour)
        draw.text((x + pad - left, y + pad - top), text, font=font, fill=_text_colour(colour))
    return image


def draw_detections(pixels: torch.Tensor, detections: Sequence[dict[str, Any]]) -> torch.Tensor:
    """uint8 [3, H, W] with each detection drawn as `draw_on_image` does; boxes are in pixels of `pixels`."""
    if not detections:
        return pixels
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy().copy())  # a copy: `pixels` is left as it was
    return torch.from_numpy(np.asarray(draw_on_image(image, detections)).copy()).permute(2, 0, 1)
