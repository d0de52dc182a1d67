"""Training augmentations of the paper's two recipes and the three evaluation views, as v2 transforms.

ImageNet (Sec. 3.4): shorter side sampled in [256, 480], random 224 crop, horizontal flip,
per-channel mean/std and AlexNet's PCA colour augmentation. CIFAR-10 (Sec. 4.2): 4-pixel padding,
random 32x32 crop, flip. Evaluation: the 10 crops of AlexNet (corners and centre, and their flips), or
the whole image for fully-convolutional multi-scale testing; the centre crop is the checkpoint's own
preprocessing (`backbone.preprocessing.ClassifierPreprocessing`), which the service applies too.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from backbone.pixel_statistics import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from backbone.preprocessing import to_normalized
from training.pretrain_config import PretrainConfig

# Principal components of ImageNet's RGB pixels (AlexNet Sec. 4.1; values of fb.resnet.torch).
IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class PCALighting(v2.Transform):
    """AlexNet's colour augmentation: add sum_i alpha_i * lambda_i * p_i to every pixel, alpha ~ N(0, std^2).

    Works on float images in [0, 1] (place it after ToDtype(scale=True), before Normalize).
    """

    _transformed_types = (tv_tensors.Image, torch.Tensor)

    def __init__(
        self,
        std: float = 0.1,
        eigenvalues: Sequence[float] = IMAGENET_PCA_EIGENVALUES,
        eigenvectors: Sequence[Sequence[float]] = IMAGENET_PCA_EIGENVECTORS,
    ) -> None:
        super().__init__()
        self.std = std
        self.eigenvalues = torch.tensor(eigenvalues, dtype=torch.float32)
        self.eigenvectors = torch.tensor(eigenvectors, dtype=torch.float32)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = torch.randn(3) * self.std
        return {"offset": self.eigenvectors @ (alpha * self.eigenvalues)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not inpt.is_floating_point():
            raise TypeError(
                "PCALighting needs a float image in [0, 1]; put it after ToDtype(torch.float32, scale=True)"
            )
        shifted = inpt + params["offset"].to(inpt.dtype).view(-1, 1, 1)
        return tv_tensors.wrap(shifted, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else shifted


def imagenet_train_transform(
    *,
    scale_range: tuple[int, int] = (256, 480),
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    lighting_std: float = 0.1,
) -> v2.Compose:
    # Paper: per-pixel mean subtracted; we normalise per channel (mean and std), as the service does.
    low, high = scale_range
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomShortestSize(min_size=list(range(low, high + 1)), antialias=True),  # scale augmentation
        v2.RandomCrop(crop_size),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if lighting_std > 0:
        steps.append(PCALighting(std=lighting_std))
    steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


def cifar_train_transform(
    *, crop_size: int = 32, padding: int = 4, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> v2.Compose:
    # Paper: per-pixel mean subtracted; we normalise per channel (mean and std), as the service does.
    return v2.Compose([v2.RandomCrop(crop_size, padding=padding), v2.RandomHorizontalFlip(), *to_normalized(mean, std)])


class StackCrops:
    """Tuple of crops -> one (num_crops, C, H, W) tensor."""

    def __call__(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(crop) for crop in crops])


def ten_crop_transform(*, resize: int, crop_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The 10-crop testing of AlexNet used by the paper: four corners and centre, and their mirror images."""
    return v2.Compose(
        [v2.Resize(resize, antialias=True), *to_normalized(mean, std), v2.TenCrop(crop_size), StackCrops()]
    )


def whole_image_transform(*, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The full image, normalised; multi-scale evaluation resizes it to each scale itself."""
    return v2.Compose(to_normalized(mean, std))


def train_transform_for(cfg: PretrainConfig):
    """The training augmentation the config names: the paper's ImageNet (Sec. 3.4) or CIFAR (Sec. 4.2) one."""
    if cfg.augmentation == "imagenet":
        return imagenet_train_transform(
            scale_range=tuple(cfg.train_scale_range), crop_size=cfg.crop_size, mean=cfg.mean, std=cfg.std,
            lighting_std=cfg.lighting_std,
        )  # fmt: skip
    if cfg.augmentation == "cifar":
        return cifar_train_transform(crop_size=cfg.crop_size, padding=cfg.padding, mean=cfg.mean, std=cfg.std)
    raise ValueError(f"augmentation must be 'imagenet' or 'cifar', got {cfg.augmentation!r}")
