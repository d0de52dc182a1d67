"""Input side of the detector: check targets, then normalise, resize and batch the images.

Resizing and padding are torchvision's `GeneralizedRCNNTransform` (bilinear resize of the shorter
side, padding to a multiple of 32), so the resized pixels, and hence detections, match its models
exactly. Before it, targets are checked here: a clear error for malformed or inverted boxes, and
zero-area boxes are dropped (they have no extent to regress to: log(0) in the box coding gives NaN).
`DetectorTransform.resized_size` is the one statement of the resize rule and `padded_shape` of the padding;
`detection.predictor.Predictor` applies this transform at inference, so nothing re-derives them.
"""

import math

import torch
from torch.nn import functional
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.transforms.v2.functional import to_dtype

from detection.options import DetectorOptions


class DetectorTransform(GeneralizedRCNNTransform):
    """torchvision's transform with its resize rule as a method, each side clamped to at least 1 px.

    torchvision floors `side * scale`, so an image flatter than max_size:min_size (e.g. 4000x8 at
    128/96) gets a side of 0 px and fails; here that side stays 1 px. Otherwise the sizes, and the
    bilinear interpolation, are torchvision's exactly.
    """

    def resized_size(self, height: int, width: int, *, min_size: int | None = None) -> tuple[int, int]:
        """(height, width) the network sees, before padding; `min_size` defaults to the eval size."""
        shorter = self.min_size[-1] if min_size is None else min_size
        scale = min(shorter / min(height, width), self.max_size / max(height, width))  # torchvision's arithmetic
        return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))

    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        """The batch shape an image resized to (height, width) pads to (multiples of size_divisible); images
        share a forward pass only when this matches, so that none changes another's answer."""
        step = self.size_divisible
        return math.ceil(height / step) * step, math.ceil(width / step) * step

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        if self.training and getattr(self, "_skip_resize", False):
            return image, target
        # Training draws the shorter side from min_size as torchvision does (same RNG use); eval takes the last.
        shorter = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        original = tuple(image.shape[-2:])
        size = self.resized_size(*original, min_size=shorter)
        if size == original:  # bilinear at scale 1 is the identity: skip it (about 8 ms at 800x1333)
            return image, target
        # An explicit size gives the same interpolation as torchvision's scale_factor + recompute_scale_factor.
        image = functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], original, size)
        return image, target


def build_transform(options: DetectorOptions) -> DetectorTransform:
    return DetectorTransform(
        min_size=tuple(options.min_size),
        max_size=options.max_size,
        image_mean=list(options.image_mean),
        image_std=list(options.image_std),
        size_divisible=options.size_divisible,
    )


def check_images(images: list[torch.Tensor]) -> None:
    if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
        raise TypeError("images must be a list of CHW float tensors (use Detector.predict for PIL images or uint8)")
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image {index}: expected a tensor of shape [3, H, W], got {shape}")
        if not image.is_floating_point():
            raise TypeError(f"image {index}: expected floats in [0, 1], got {image.dtype} (predict() takes uint8)")


def prepare_targets(targets: list[dict[str, torch.Tensor]], *, num_images: int, num_classes: int) -> list[dict]:
    """Validated copies of the targets (inputs are never modified), without zero-area boxes."""
    if len(targets) != num_images:
        raise ValueError(f"got {num_images} images but {len(targets)} targets")
    prepared = []
    for index, target in enumerate(targets):
        if "boxes" not in target or "labels" not in target:
            raise ValueError(f"target {index}: needs 'boxes' and 'labels', has {sorted(target)}")
        boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor)
        labels = torch.as_tensor(target["labels"]).as_subclass(torch.Tensor)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"target {index}: boxes must have shape [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
        if labels.shape != boxes.shape[:1]:
            raise ValueError(f"target {index}: {len(boxes)} boxes but labels of shape {tuple(labels.shape)}")
        if not boxes.is_floating_point():
            boxes = boxes.float()
        if labels.dtype != torch.int64:
            raise TypeError(f"target {index}: labels must be int64, got {labels.dtype}")
        finite = torch.isfinite(boxes).all(dim=1)
        if not finite.all():
            raise ValueError(f"target {index}: box {boxes[~finite][0].tolist()} contains NaN or infinity")
        inverted = (boxes[:, 2:] < boxes[:, :2]).any(dim=1)
        if inverted.any():
            box = boxes[inverted][0].tolist()
            raise ValueError(f"target {index}: box {box} has x2 < x1 or y2 < y1 (boxes are x1, y1, x2, y2)")
        out_of_range = (labels < 1) | (labels > num_classes)
        if out_of_range.any():
            raise ValueError(
                f"target {index}: label {labels[out_of_range][0].item()} outside 1..{num_classes} (0 is background)"
            )
        keep = (boxes[:, 2:] > boxes[:, :2]).all(dim=1)
        prepared.append({**target, "boxes": boxes[keep], "labels": labels[keep]})
    return prepared


def batch_to_device(
    images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], *, device: torch.device, num_classes: int
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A loader's batch on `device`, for `Detector(images, targets, targets_prepared=True)`.

    Targets are checked here, on the CPU: checked on a GPU, each `.any()` is a host-device sync (about
    4 per image per step). Copies are asynchronous (from the loader's pinned memory); uint8 images
    become float in [0, 1] on the device, so a quarter of the bytes cross the bus.
    """
    prepared = prepare_targets(targets, num_images=len(images), num_classes=num_classes)
    on_device = [to_dtype(image.to(device, non_blocking=True), torch.float32, scale=True) for image in images]
    device_targets = [
        {"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
        for t in prepared
    ]
    return on_device, device_targets
