"""Detection evaluation across ranks: each rank detects on its shard, rank 0 merges and scores.

Every rank runs the model on its own images (with targets, so the validation loss comes for free),
the per-image detections are gathered to every rank, and the metrics (pycocotools COCO, VOC 11-point
and area AP) are computed from the merged set, so the figures do not depend on the number of ranks.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from backbone.progress import progress
from detection.ensemble import EnsembleDetector
from detection.evaluation import evaluate_coco, evaluate_voc, merge_predictions
from detection.test_time import TestTimeOptions, detect_with_options
from detection.transform import batch_to_device
from training.distributed import DistributedContext, all_gather_objects, all_reduce_sum
from training.loop import unwrap_model

METRIC_SETS = ("coco", "voc")


@torch.no_grad()
def detect_shard(
    model: nn.Module,
    loader: DataLoader,
    *,
    ctx: DistributedContext,
    autocast: Callable[[], AbstractContextManager],
    test_time: TestTimeOptions | None = None,
) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, float]]:
    """Detections of every image in the dataset (gathered from all ranks) and the mean validation losses.

    test_time: the test-time ladder's options; other than the defaults, the detections come from
    `detect_with_options` and there are no validation losses (its rungs have none, nor an ensemble)."""
    plain = (test_time is None or test_time == TestTimeOptions()) and not isinstance(
        unwrap_model(model), EnsembleDetector
    )
    test_time = test_time or TestTimeOptions()
    was_training = model.training
    model.eval()
    predictions: dict[int, dict[str, np.ndarray]] = {}
    loss_sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=ctx.device)
    try:
        # rank 0 shows progress (images/s and ETA, as the training bar); leave=False keeps the log to one bar
        batches = progress(
            loader, desc="evaluate", unit="batch", dynamic_ncols=True, leave=False, disable=not ctx.is_main
        )
        for images, targets in batches:
            images, device_targets = batch_to_device(
                images, targets, device=ctx.device, num_classes=unwrap_model(model).num_classes
            )
            with autocast():
                if plain:
                    losses, detections = model(images, device_targets, targets_prepared=True)
                else:
                    losses, detections = {}, detect_with_options(unwrap_model(model), images, test_time)
            for name, value in losses.items():
                loss_sums[name] = loss_sums.get(name, 0) + value.detach().float() * len(images)
            count += len(images)
            for target, detection in zip(targets, detections):
                predictions[int(target["image_id"])] = {
                    key: detection[key].float().cpu().numpy() if key != "labels" else detection[key].cpu().numpy()
                    for key in ("boxes", "scores", "labels")
                }
    finally:
        model.train(was_training)
    names = sorted(loss_sums)
    totals = all_reduce_sum(torch.stack([count, *(loss_sums[name] for name in names)]), ctx)
    val_losses = {f"val_{name}": (totals[i + 1] / totals[0].clamp(min=1)).item() for i, name in enumerate(names)}
    if names:
        val_losses["val_loss"] = sum(val_losses.values())
    merged = merge_predictions(all_gather_objects(predictions, ctx))
    return merged, val_losses


def score(dataset: Any, predictions: dict[int, dict[str, np.ndarray]], *, metric_sets: tuple[str, ...],
          verbose: bool) -> tuple[dict[str, float], dict[str, Any]]:  # fmt: skip
    """Flat headline numbers ({"AP": ..., "AP50": ..., "voc07_mAP": ...}) and the full metric objects."""
    flat: dict[str, float] = {}
    full: dict[str, Any] = {}
    for metric_set in metric_sets:
        if metric_set == "coco":
            coco = evaluate_coco(dataset, predictions, verbose=verbose)
            flat.update(coco.stats)
            full["coco"] = coco
        elif metric_set == "voc":
            voc = evaluate_voc(dataset, predictions)
            flat["voc07_mAP"] = voc.mean_ap["11point"]
            flat["voc_area_mAP"] = voc.mean_ap["area"]
            full["voc"] = voc
            if verbose:
                print(voc.format_table(), flush=True)
        else:
            raise ValueError(f"unknown metric set {metric_set!r}; known: {', '.join(METRIC_SETS)}")
    return flat, full
