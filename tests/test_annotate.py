"""detection.annotate: the one drawing of detections (predict --save-annotated and /detect/annotated)."""

import pytest
import torch
from PIL import Image, ImageColor

from detection.annotate import PALETTE, class_colour, draw_detections, draw_on_image, label_font_size

GREY = (128, 128, 128)


def filled_rows_above(image: Image.Image, *, x: int, y: int, colour: str) -> int:
    """How many rows straight above (x, y) are exactly the class colour: the label's filled background."""
    rgb = ImageColor.getrgb(colour)
    rows = 0
    while y - rows - 1 >= 0 and image.getpixel((x, y - rows - 1)) == rgb:
        rows += 1
    return rows


@pytest.mark.parametrize("side", [100, 800, 3000])
def test_label_has_a_filled_background_scaled_to_the_image(side):
    image = Image.new("RGB", (side, side), GREY)
    box = [0.3 * side, 0.4 * side, 0.7 * side, 0.8 * side]
    drawn = draw_on_image(image, [{"box": box, "score": 0.87, "label": 1, "name": "person"}])
    band = filled_rows_above(drawn, x=int(box[0]) + 1, y=int(box[1]), colour=class_colour(1))
    # The label's background is at least as tall as the font, which grows with the image.
    assert band >= label_font_size(side, side) >= 12
    assert label_font_size(side, side) >= side / 40 - 1
    # Text is written on it, in black or white.
    label = drawn.crop((int(box[0]), int(box[1]) - band, int(box[2]), int(box[1])))
    assert {(0, 0, 0), (255, 255, 255)} & set(label.getdata())
    assert drawn is image  # drawn in place: no copy of a large upload


def test_a_label_at_the_right_edge_stays_inside_the_image():
    image = Image.new("RGB", (400, 300), GREY)
    drawn = draw_on_image(image, [{"box": [390, 100, 399, 200], "score": 0.5, "label": 2, "name": "dining table"}])
    colour = ImageColor.getrgb(class_colour(2))
    row = [drawn.getpixel((x, 99)) for x in range(400)]
    # The wide label moved left to fit, ending at the image's edge, instead of being cut at x=400.
    assert row[399] == colour and row.index(colour) < 340


def test_colours_are_fixed_per_class():
    assert class_colour(3) == class_colour(3 + len(PALETTE)) == PALETTE[3]
    assert len({class_colour(label) for label in range(len(PALETTE))}) == len(PALETTE)
    image = Image.new("RGB", (200, 200), GREY)
    detections = [
        {"box": [10, 50, 60, 100], "score": 0.9, "label": 5, "name": "a"},
        {"box": [120, 50, 190, 100], "score": 0.4, "label": 5, "name": "a"},
    ]
    drawn = draw_on_image(image, detections)
    assert drawn.getpixel((10, 75)) == drawn.getpixel((120, 75)) == ImageColor.getrgb(class_colour(5))


def test_draw_detections_takes_and_gives_uint8_chw_tensors():
    pixels = torch.full((3, 60, 80), 128, dtype=torch.uint8)
    drawn = draw_detections(pixels, [{"box": [10, 20, 50, 50], "score": 0.5, "label": 0, "name": "x"}])
    assert drawn.dtype == torch.uint8 and drawn.shape == pixels.shape
    assert tuple(drawn[:, 35, 10].tolist()) == ImageColor.getrgb(class_colour(0))
    assert bool((pixels == 128).all())  # not drawn in place
    assert draw_detections(pixels, []) is pixels


def test_where_labels_overlap_the_higher_score_is_on_top():
    image = Image.new("RGB", (300, 300), GREY)
    detections = [  # highest first, as the detector answers
        {"box": [100, 100, 200, 200], "score": 0.9, "label": 1, "name": "high"},
        {"box": [100, 100, 180, 180], "score": 0.3, "label": 2, "name": "low"},
    ]
    drawn = draw_on_image(image, detections)
    assert drawn.getpixel((101, 98)) == ImageColor.getrgb(class_colour(1))
