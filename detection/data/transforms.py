"""Box-aware augmentation with torchvision transforms v2: shorter-side resize, multi-scale, flip; presets."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class ResizePreset:
    """Input sizes of a recipe: shorter sides sampled per training image, the cap on the longer side, test size."""

    train_min_sizes: tuple[int, ...]
    max_size: int
    test_min_size: int


TRANSFORM_PRESETS = {
    # the paper (appendix, after Faster R-CNN): shorter side 600, longer side at most 1000, one scale
    "paper": ResizePreset(train_min_sizes=(600,), max_size=1000, test_min_size=600),
    # detectron2's Base-RCNN-FPN: shorter side drawn from 640..800 per image, 800 at test, at most 1333
    "modern": ResizePreset(train_min_sizes=(640, 672, 704, 736, 768, 800), max_size=1333, test_min_size=800),
}


def build_transforms(
    *,
    min_sizes: Sequence[int] | None = None,
    max_size: int | None = None,
    flip_prob: float = 0.0,
    to_float: bool = True,
) -> v2.Compose:
    """Transforms for (image, target) pairs; boxes follow the image.

    min_sizes: resize so the shorter side is one of these (drawn per image: multi-scale training), the
    longer side at most max_size; None keeps the size. flip_prob: horizontal flip probability.
    to_float: end as float32 in [0, 1] (what torchvision detection models take) instead of uint8.
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if min_sizes is not None:
        steps.append(v2.RandomShortestSize(min_size=list(min_sizes), max_size=max_size))
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    if to_float:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def preset_transforms(name: str, *, train: bool, to_float: bool = True) -> v2.Compose:
    """Training: the preset's multi-scale resize and a 0.5 flip. Evaluation: no resize, because the
    detector resizes to `test_min_size` itself and returns boxes in the pixels it was given."""
    if name not in TRANSFORM_PRESETS:
        raise KeyError(f"unknown transform preset {name!r}; known: {', '.join(TRANSFORM_PRESETS)}")
    if not train:
        return build_transforms(to_float=to_float)
    preset = TRANSFORM_PRESETS[name]
    return build_transforms(
        min_sizes=preset.train_min_sizes, max_size=preset.max_size, flip_prob=0.5, to_float=to_float
    )
