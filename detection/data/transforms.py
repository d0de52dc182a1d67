"""Box-aware augmentation with torchvision transforms v2: a horizontal flip, and uint8 or float output.

No resize here: the detector resizes every image itself (`DetectorOptions.min_size`, several values for
multi-scale training, and `max_size`), so a resize in the data pipeline would be work done twice.
"""

import torch
from torchvision.transforms import v2


def build_transforms(*, flip_prob: float = 0.0, to_float: bool = True) -> v2.Compose:
    """Transforms for (image, target) pairs; boxes follow the image.

    flip_prob: horizontal flip probability (the paper's only augmentation). to_float: end as float32 in
    [0, 1] (what torchvision detection models take) instead of uint8.
    """
    steps: list[v2.Transform] = [v2.ToImage()]
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    if to_float:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)
