"""What a classifier's input is: the ImageNet statistics, and the evaluation preprocessing a checkpoint records.

`ClassifierPreprocessing` holds what a classifier's manifest says about its input (shorter side resized
to `resize`, the central `size` square, normalised by `mean`/`std`). Training writes it into the
manifest and evaluates with it; the service builds it from the manifest (`from_manifest`), so serving
cannot drift from training.
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import pil_modes_mapping
from torchvision.transforms.v2 import functional as F

from backbone.pixel_statistics import IMAGENET_MEAN, IMAGENET_STD


def to_normalized(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """PIL image or uint8 tensor -> float in [0, 1] -> (x - mean) / std per channel."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


@dataclass(frozen=True)
class ClassifierPreprocessing:
    """Resize the shorter side to `resize`, keep the central `size` x `size`, normalise."""

    size: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize < self.size:
            raise ValueError(f"preprocessing: resize {self.resize} is smaller than the crop size {self.size}")
        InterpolationMode(self.interpolation)  # a name torchvision does not know fails here, not per image

    @classmethod
    def from_manifest(cls, preprocessing: Mapping[str, Any], *, stem: str = "imagenet") -> "ClassifierPreprocessing":
        """From a manifest's "preprocessing"; a field it lacks (a hand-made checkpoint) takes the stem's usual
        value: CIFAR 32 px uncropped, ImageNet 224 from 256 (torchvision's evaluation), ImageNet statistics."""
        size = int(preprocessing.get("size", 32 if stem == "cifar" else 224))
        return cls(
            size=size,
            resize=int(preprocessing.get("resize", size if stem == "cifar" else round(size * 256 / 224))),
            mean=tuple(preprocessing.get("mean", IMAGENET_MEAN)),
            std=tuple(preprocessing.get("std", IMAGENET_STD)),
            interpolation=preprocessing.get("interpolation", "bilinear"),
        )

    def to_manifest(self) -> dict[str, Any]:
        """What `backbone.serving_checkpoint.save_classifier` stores (JSON: lists, not tuples)."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    def transform(self) -> v2.Compose:
        """The evaluation view as a v2 transform on a decoded image (PIL or tensor): training's centre crop."""
        return v2.Compose(
            [
                v2.Resize(self.resize, interpolation=InterpolationMode(self.interpolation), antialias=True),
                v2.CenterCrop(self.size),
                *to_normalized(self.mean, self.std),
            ]
        )

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of the image that `transform` keeps, in the image's own pixels.

        Resizing only that region straight to size x size gives the same pixels within one 8-bit level
        (the filter still reads the neighbours outside it) while the longer side never grows: a
        1 x 1,000,000 image costs a crop, not a 32 x 32,000,000 intermediate. Sizes and offsets are
        torchvision's Resize and CenterCrop.
        """
        shorter, longer = min(width, height), max(width, height)
        resized_longer = int(self.resize * longer / shorter)
        resized_width, resized_height = (
            (self.resize, resized_longer) if width <= height else (resized_longer, self.resize)
        )
        left = int(round((resized_width - self.size) / 2.0))
        top = int(round((resized_height - self.size) / 2.0))
        x_scale, y_scale = width / resized_width, height / resized_height
        return (left * x_scale, top * y_scale, (left + self.size) * x_scale, (top + self.size) * y_scale)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """`transform`'s pixels from an 8-bit RGB PIL image, resizing only the region kept: [3, size, size]."""
        resample = pil_modes_mapping[InterpolationMode(self.interpolation)]
        cropped = image.resize((self.size, self.size), resample=resample, box=self.crop_box(*image.size))
        pixels = F.to_dtype(F.pil_to_tensor(cropped), torch.float32, scale=True)
        return F.normalize(pixels, mean=list(self.mean), std=list(self.std))
