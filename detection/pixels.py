"""A PIL image -> its RGB pixels as a numpy array, without torch: the decoding processes of the service run it
(detection.decoding), and `detection.images` builds the detector's float tensors on it. 8-bit images stay uint8;
16-bit, 32-bit and float greyscale stay float in [0, 1] (8 bits would truncate them); alpha is composited onto
white; palette, CMYK and the rest convert to RGB.
"""

import numpy as np
from PIL import Image

# Modes whose samples are wider than 8 bits; PIL's convert("RGB") would clip them, not scale them.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_array(image: Image.Image) -> np.ndarray:
    """RGB [H, W, 3] as the detector consumes it: uint8 for 8-bit images (a quarter of float's memory),
    float32 in [0, 1] for 16-bit, 32-bit and float images, which 8 bits would truncate."""
    if image.mode in WIDE_MODES:
        # Kept in float: 8 bits would truncate them. The range is `to_rgb`'s.
        grey = np.asarray(image, dtype=np.float32) / wide_range(image)
        return np.repeat(np.clip(np.nan_to_num(grey), 0.0, 1.0)[..., None], 3, axis=2)
    return np.array(to_rgb(image))


def wide_range(image: Image.Image) -> float:
    """The sample value that means white in a wide-mode image: 16-bit 65535, a 32-bit integer image (a TIFF's
    BitsPerSample 32, Pillow's signed "I") 2**31-1, float 1.0; from the TIFF tag where there is one, else 16 bits."""
    if image.mode == "F":
        return 1.0
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # BitsPerSample
    bits = int(bits[0] if isinstance(bits, tuple) else bits) if bits else 16
    return float(2**31 - 1 if bits == 32 else 65535)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grey, palette, CMYK, alpha (composited onto white, so transparent areas do
    not turn black) and wide samples (scaled from `wide_range`, negatives as 0) all convert here."""
    if image.mode in WIDE_MODES:
        scale = 255.0 / wide_range(image)
        wide = image if image.mode in ("I", "F") else image.convert("I")
        image = wide.point(lambda value: value * scale + 0.5).convert("L")  # convert("L") alone clips
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
