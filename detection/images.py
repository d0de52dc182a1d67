"""Any image a user hands to `Detector.predict` -> an RGB float tensor [3, H, W] in [0, 1].

PIL images of every common mode: RGB, L, 1, P (palette), RGBA / LA / PA and P with transparency
(composited onto white, so transparent areas do not turn black), CMYK and YCbCr, 16-bit and 32-bit
integer greyscale (I;16*: divided by 65535; I: by 2**31-1 when a TIFF says 32 bits, else 65535) and float
(F: clipped to [0, 1]). `detection.pixels.to_array` is the one PIL-to-pixels conversion (torch-free: the
service's decoding processes run it through detection.decoding).
Tensors: uint8 (/255), uint16 (/65535) or float in [0, 1], shaped [H, W], [1, H, W], [3, H, W] or
[4, H, W] (RGBA, alpha composited as for PIL). Pixels are used as stored: EXIF orientation is not
applied (boxes refer to the stored pixel grid; rotate with PIL.ImageOps.exif_transpose first if needed).
"""

import torch
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype

from detection.pixels import to_array


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
