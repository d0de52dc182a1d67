"""Top-1 and top-5 error of a classifier: centre crop, the paper's 10-crop, fully-convolutional multi-scale.

Each rank scores its shard of the evaluation set; counts are summed over ranks, so every rank
returns the errors of the whole set. Crop and scale scores are averaged as softmax probabilities.
"""

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from training.distributed import DistributedContext, all_reduce_sum

# Sec. 3.4: "the fully-convolutional form ... average the scores at multiple scales
# (images are resized such that the shorter side is in {224, 256, 384, 480, 640})".
PAPER_TEST_SCALES = (224, 256, 384, 480, 640)
EVAL_MODES = ("center", "ten_crop", "multi_scale")


def predict_center(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, classes) probabilities."""
    return model(images).float().softmax(dim=1)


def predict_ten_crop(
    model: nn.Module, crops: torch.Tensor, *, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """(N, 10, C, H, W) -> (N, classes): the average of the crops' probabilities."""
    n, k = crops.shape[:2]
    probabilities = model(crops.flatten(0, 1).contiguous(memory_format=memory_format)).float().softmax(dim=1)
    return probabilities.view(n, k, -1).mean(dim=1)


def fully_convolutional_scores(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, classes, h, w): the fc layer applied as a 1x1 convolution on the last stage."""
    features = model.forward_features(image)[model.last_stage]
    weight = model.fc.weight.view(*model.fc.weight.shape, 1, 1)
    return F.conv2d(features, weight.to(features.dtype), model.fc.bias.to(features.dtype))


def predict_multi_scale(
    model: nn.Module,
    image: torch.Tensor,
    *,
    scales: Sequence[int] = PAPER_TEST_SCALES,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """One (C, H, W) normalised image -> (1, classes): per scale, resize the shorter side, average the
    score map over positions, softmax; then average over scales."""
    height, width = image.shape[-2:]
    per_scale = []
    for scale in scales:
        factor = scale / min(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        resized = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)
        scores = fully_convolutional_scores(model, resized.contiguous(memory_format=memory_format))
        per_scale.append(scores.float().mean(dim=(2, 3)).softmax(dim=1))
    return torch.stack(per_scale).mean(dim=0)


def topk_errors(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Numbers of top-1 and top-5 correct predictions (top-5 = top-all when fewer than 5 classes)."""
    k = min(5, probabilities.shape[1])
    top = probabilities.topk(k, dim=1).indices
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def collate_list(batch):
    """Keep variable-sized images as a list (multi-scale evaluation)."""
    images, labels = zip(*batch)
    return list(images), torch.tensor(labels)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    mode: str,
    ctx: DistributedContext,
    autocast: Callable = contextlib.nullcontext,
    scales: Sequence[int] = PAPER_TEST_SCALES,
    channels_last: bool = False,
) -> dict[str, float]:
    """{"top1_error", "top5_error", "count"} over the whole set (all ranks' shards summed).

    `model` is the unwrapped classifier; `loader` yields what the mode's transform makes:
    (N, C, H, W) for "center", (N, 10, C, H, W) for "ten_crop", lists of (C, H, W) for "multi_scale".
    `autocast` is a zero-argument context factory (e.g. `Precision.autocast`).
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {EVAL_MODES}, got {mode!r}")
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    counts = torch.zeros(3, dtype=torch.float64)  # top-1 correct, top-5 correct, images
    for images, labels in loader:
        with autocast():
            if mode == "multi_scale":
                probabilities = torch.cat(
                    [
                        predict_multi_scale(model, image.to(ctx.device), scales=scales, memory_format=memory_format)
                        for image in images
                    ]
                )
            elif mode == "ten_crop":
                crops = images.to(ctx.device, non_blocking=True)
                probabilities = predict_ten_crop(model, crops, memory_format=memory_format)
            else:
                images = images.to(ctx.device, non_blocking=True).contiguous(memory_format=memory_format)
                probabilities = predict_center(model, images)
        top1, top5 = topk_errors(probabilities.cpu(), labels)
        counts += torch.tensor([top1, top5, len(labels)], dtype=torch.float64)
    counts = all_reduce_sum(counts.to(ctx.device), ctx).cpu()
    model.train(was_training)
    total = max(counts[2].item(), 1.0)
    return {
        "top1_error": 1 - counts[0].item() / total,
        "top5_error": 1 - counts[1].item() / total,
        "count": int(counts[2].item()),
    }
