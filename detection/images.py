"""Any image a user hands to `Detector.predict` -> an RGB float tensor [3, H, W] in [0, 1].

PIL images of every common mode: RGB, L, 1, P (palette), RGBA / LA / PA and P with transparency
(composited onto white, so transparent areas do not turn black), CMYK and YCbCr, 16-bit and 32-bit
integer greyscale (I;16*, I: divided by 65535) and float (F: clipped to [0, 1]).
Tensors: uint8 (/255), uint16 (/65535) or float in [0, 1], shaped [H, W], [1, H, W], [3, H, W] or
[4, H, W] (RGBA, alpha composited as for PIL). Pixels are used as stored: EXIF orientation is not
applied (boxes refer to the stored pixel grid; rotate with PIL.ImageOps.exif_transpose first if needed).
"""

import numpy as np
import torch
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_float_image(image: Image.Image | torch.Tensor, *, index: int = 0) -> torch.Tensor:
    """Convert one image; `index` only names the image in error messages."""
    if isinstance(image, Image.Image):
        return _from_pil(image, index=index)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, index=index)
    raise TypeError(f"image {index}: expected a PIL image or a tensor, got {type(image).__name__}")


def _from_pil(image: Image.Image, *, index: int) -> torch.Tensor:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image {index}: empty image ({image.width}x{image.height})")
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / 65535.0
        return torch.from_numpy(np.clip(grey, 0.0, 1.0)).expand(3, -1, -1).contiguous()
    if image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return torch.from_numpy(grey).expand(3, -1, -1).contiguous()
    return _rgb_uint8(image).float().div_(255.0)


def to_pixels(image: Image.Image) -> torch.Tensor:
    """RGB [3, H, W] as the detector consumes it: uint8 for 8-bit images (a quarter of float's memory),
    float in [0, 1] for 16-bit and float images, which 8 bits would truncate."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        return _from_pil(image, index=0)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"empty image ({image.width}x{image.height})")
    return _rgb_uint8(image)


def _rgb_uint8(image: Image.Image) -> torch.Tensor:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def _from_tensor(image: torch.Tensor, *, index: int) -> torch.Tensor:
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"image {index}: expected [H, W] or [C, H, W] with C in 1, 3, 4; got {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image {index}: empty image {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif image.dtype == torch.uint16:
        image = image.float() / 65535.0
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
