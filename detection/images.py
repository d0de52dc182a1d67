"""Any image a user hands to `Detector.predict` -> an RGB float tensor [3, H, W] in [0, 1].

PIL images of every common mode: RGB, L, 1, P (palette), RGBA / LA / PA and P with transparency
(composited onto white, so transparent areas do not turn black), CMYK and YCbCr, 16-bit and 32-bit
integer greyscale (I;16*: divided by 65535; I: by 2**31-1 when a TIFF says 32 bits, else 65535) and float
(F: clipped to [0, 1]). `to_array` is the one PIL-to-pixels conversion: detection.decoding decodes files with it.
Tensors: uint8 (/255), uint16 (/65535) or float in [0, 1], shaped [H, W], [1, H, W], [3, H, W] or
[4, H, W] (RGBA, alpha composited as for PIL). Pixels are used as stored: EXIF orientation is not
applied (boxes refer to the stored pixel grid; rotate with PIL.ImageOps.exif_transpose first if needed).
"""

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype

# Modes whose samples are wider than 8 bits; PIL's convert("RGB") would clip them, not scale them.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_float_image(image: Image.Image | torch.Tensor, *, index: int = 0) -> torch.Tensor:
    """Convert one image; `index` only names the image in error messages."""
    if isinstance(image, Image.Image):
        pixels = _from_pil(image, index=index)
        return to_dtype(pixels, torch.float32, scale=True) if pixels.dtype == torch.uint8 else pixels
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, index=index)
    raise TypeError(f"image {index}: expected a PIL image or a tensor, got {type(image).__name__}")


def _from_pil(image: Image.Image, *, index: int) -> torch.Tensor:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image {index}: empty image ({image.width}x{image.height})")
    return torch.from_numpy(to_array(image)).permute(2, 0, 1).contiguous()


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


def _from_tensor(image: torch.Tensor, *, index: int) -> torch.Tensor:
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"image {index}: expected [H, W] or [C, H, W] with C in 1, 3, 4; got {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image {index}: empty image {tuple(image.shape)}")
    if image.dtype in (torch.uint8, torch.uint16):
        image = to_dtype(image, torch.float32, scale=True)  # training's conversion (transform.batch_to_device)
    elif image.is_floating_point():
        image = image.float()
    else:
        raise TypeError(f"image {index}: expected uint8, uint16 or float pixels, got {image.dtype}")
    if image.shape[0] == 4:
        rgb, alpha = image[:3], image[3:]
        image = rgb * alpha + (1.0 - alpha)  # composite onto white, as for PIL images
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()
