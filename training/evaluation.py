"""Top-1 and top-5 error of a classifier: centre crop, the paper's 10-crop, fully-convolutional multi-scale.

Each rank scores its shard of the evaluation set; counts are summed over ranks, so every rank
returns the errors of the whole set. Crop and scale scores are averaged as softmax probabilities.
"""

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from backbone.preprocessing import ClassifierPreprocessing
from backbone.serving_checkpoint import load_classifier
from backbone.weights import CheckpointError
from training.device_cifar import DeviceEvalBatches, DeviceImages, Normalizer
from training.distributed import DistributedContext, all_reduce_sum
from training.loop import make_loader
from training.precision import Precision
from training.pretrain_config import PAPER_TEST_SCALES, PretrainConfig
from training.run_log import report
from training.sampler import SeededDataset
from training.transforms import ten_crop_transform, whole_image_transform

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


class EvalLoaders:
    """This rank's loader for each evaluation view, built on first use and kept (its workers persist)."""

    def __init__(
        self, cfg: PretrainConfig, *, preprocessing: ClassifierPreprocessing, dataset, ctx, batch_size: int,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.preprocessing = preprocessing  # the centre view; the others take its sizes and statistics
        self.dataset = dataset
        self.ctx = ctx
        self.batch_size = batch_size
        # the centre view of a set held on the device (--data_on_device) is cropped and normalised there
        self.normalizer = (
            Normalizer(mean=preprocessing.mean, std=preprocessing.std, device=ctx.device)
            if isinstance(dataset, DeviceImages)
            else None
        )
        self.shard = list(range(ctx.rank, len(dataset), ctx.world_size))  # every rank scores its own share
        self.loaders: dict[str, object] = {}

    def __getitem__(self, mode: str):
        if mode not in self.loaders:
            self.loaders[mode] = self._build(mode)
        return self.loaders[mode]

    def _build(self, mode: str):
        if self.normalizer is not None and mode == "center":
            return DeviceEvalBatches(self.dataset, indices=self.shard, batch_size=self.batch_size,
                                     normalizer=self.normalizer)  # fmt: skip
        view = self.preprocessing
        views = {
            "center": view.transform,
            "ten_crop": lambda: ten_crop_transform(
                resize=view.resize, crop_size=view.size, mean=view.mean, std=view.std
            ),  # fmt: skip
            "multi_scale": lambda: whole_image_transform(mean=view.mean, std=view.std),
        }
        return make_loader(
            SeededDataset(self.dataset, views[mode]()), sampler=self.shard, workers=self.cfg.workers,
            device=self.ctx.device,
            batch_size=1 if mode == "multi_scale" else self.batch_size,
            collate_fn=collate_list if mode == "multi_scale" else None,
        )  # fmt: skip


def final_evaluation(
    model, *, cfg: PretrainConfig, loaders: EvalLoaders, ctx, precision: Precision
) -> dict[str, float]:
    """Top-1/top-5 error in every --final_eval view (centre crop, 10-crop, multi-scale), printed on rank 0."""
    results = {}
    for mode in cfg.final_eval:
        started = time.perf_counter()
        errors = evaluate(
            model, loaders[mode], mode=mode, ctx=ctx, autocast=precision.autocast, scales=cfg.test_scales,
            channels_last=cfg.channels_last,
        )  # fmt: skip
        results.update({f"{name}_{mode}": value for name, value in errors.items() if name != "count"})
        seconds = time.perf_counter() - started
        report(
            f"{mode:>11}: top-1 error {100 * errors['top1_error']:.2f}%  top-5 error "
            f"{100 * errors['top5_error']:.2f}%  ({errors['count']} images, {seconds:.1f} s)",
            ctx=ctx,
        )
    return results


def evaluate_classifier_checkpoint(
    path: str, *, cfg: PretrainConfig, dataset, split: Path, ctx: DistributedContext, precision: Precision,
    batch_size: int,
) -> dict[str, float]:  # fmt: skip
    """--eval_only: a serving checkpoint on the validation split (`split` names it in errors), in every
    --final_eval view, with the checkpoint's own preprocessing."""
    model, manifest = load_classifier(path)
    if manifest["class_names"] != list(dataset.classes):
        raise CheckpointError(f"{path} was trained on other classes than {split}")
    model.to(ctx.device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    preprocessing = ClassifierPreprocessing.from_manifest(
        manifest["preprocessing"], stem=model.config.get("stem", "imagenet")
    )
    loaders = EvalLoaders(cfg, preprocessing=preprocessing, dataset=dataset, ctx=ctx, batch_size=batch_size)
    return final_evaluation(model, cfg=cfg, loaders=loaders, ctx=ctx, precision=precision)
