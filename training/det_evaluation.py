"""Detection evaluation across ranks: each rank detects on its shard, rank 0 merges and scores.

The detections come from `detection.predictor.Predictor`, the one inference path the predict CLI, the
service and the Python API take (prepare with the model's resize rule, group by padded input shape, one
precision policy, boxes in source pixels), so a checkpoint's AP is the AP of what users get from it and an
image is never padded to a batch-mate's shape. The per-image detections are gathered to every rank and
scored (pycocotools COCO, VOC 11-point and area AP) on the merged set, so the figures do not depend on the
number of ranks.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from backbone.progress import progress
from backbone.weights import CheckpointError
from detection.data import collate_fn
from detection.detector import Detector
from detection.detector_checkpoint import load_detector
from detection.evaluation import evaluate_coco, evaluate_voc, merge_predictions, to_coco_results, write_json
from detection.evaluation.predictions import as_arrays
from detection.evaluation.report import dataset_image_loader, write_evaluation_report
from detection.predictor import PLAIN, Cut, Predictor
from detection.test_time import TestTimeOptions
from detection.transform import batch_to_device
from training.distributed import DistributedContext, all_gather_objects, all_reduce_sum
from training.loop import make_loader
from training.run_log import report, reporting

METRIC_SETS = ("coco", "voc")


def evaluation_loader(dataset: Any, *, ctx: DistributedContext, batch_size: int, workers: int) -> DataLoader:
    """This rank's share of the validation images (every world_size-th) with their targets, decoded in `workers`,
    `batch_size` at a time, ordered by image size: the Predictor runs only images of one padded input shape
    together, so neighbours of one size make full forward passes (the metrics do not depend on the order)."""
    share = sorted(range(ctx.rank, len(dataset), ctx.world_size), key=dataset.get_image_size)
    return make_loader(
        dataset, sampler=share, batch_size=batch_size, workers=workers, device=ctx.device, collate_fn=collate_fn
    )


def evaluation_cut(model: Detector) -> Cut:
    """What evaluation keeps: the model's own score threshold (box_score_thresh, 0.05 by default) and its
    detections per image (COCO's 100), every class."""
    return Cut(score_threshold=model.roi_heads.score_thresh, max_detections=model.roi_heads.detections_per_img)


@torch.no_grad()
def detect_shard(
    model: Detector,
    loader: DataLoader,
    *,
    ctx: DistributedContext,
    precision: str,
    test_time: TestTimeOptions = PLAIN,
    loss_autocast: Callable[[], AbstractContextManager] | None = None,
) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, float]]:
    """Detections of every image in the dataset (gathered from all ranks) and the mean validation losses.

    model: the unwrapped detector (never the DDP wrapper), left in the mode it came in. The loader yields the
    dataset's decoded uint8 images with their targets. loss_autocast: when given (in-training evaluation),
    the validation losses are computed too, under training's precision; else there are none."""
    cut = evaluation_cut(model)
    predictions: dict[int, dict[str, np.ndarray]] = {}
    loss_sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=ctx.device)
    was_training = model.training
    try:
        predictor = Predictor(model, device=ctx.device, precision=precision, optimize=False, test_time=test_time)
        # rank 0 shows progress (images/s and ETA, as the training bar); leave=False keeps the log to one bar
        batches = progress(
            loader,
            desc="evaluate",
            unit="batch",
            dynamic_ncols=True,
            leave=False,
            disable=not (ctx.is_main and reporting()),
        )
        for images, targets in batches:
            prepared = [predictor.prepare(image, index=index) for index, image in enumerate(images)]
            for target, detections in zip(targets, predictor.detect(prepared, [cut] * len(prepared))):
                image_id = int(target["image_id"])
                predictions[image_id] = as_arrays(detections, image_id=image_id)
            if loss_autocast is not None:
                # Validation losses from the loader's batch (eval mode: BN statistics untouched); the detections
                # of this forward are discarded, evaluation's come from the Predictor above.
                device_images, device_targets = batch_to_device(
                    images, targets, device=ctx.device, num_classes=model.num_classes
                )
                with loss_autocast():
                    losses, _ = model(device_images, device_targets, targets_prepared=True)
                for name, value in losses.items():
                    loss_sums[name] = loss_sums.get(name, 0) + value.detach().float() * len(images)
                count += len(images)
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
                report(voc.format_table())
        else:
            raise ValueError(f"unknown metric set {metric_set!r}; known: {', '.join(METRIC_SETS)}")
    return flat, full


def evaluate_detector(
    model: torch.nn.Module,
    *,
    loader,
    dataset,
    metric_sets: tuple[str, ...],
    ctx,
    precision: str,
    verbose: bool,
    test_time: TestTimeOptions,
    loss_autocast=None,
) -> tuple[dict[str, float], dict, dict]:
    """(headline metrics and validation losses, full metric objects, merged predictions) on the whole val set:
    the detections through the Predictor at `precision`, the losses (in-training only) under `loss_autocast`."""
    predictions, val_losses = detect_shard(
        model, loader, ctx=ctx, precision=precision, test_time=test_time, loss_autocast=loss_autocast
    )
    flat, full = score(dataset, predictions, metric_sets=metric_sets, verbose=verbose and ctx.is_main)
    return {**flat, **val_losses}, full, predictions


def evaluate_checkpoint(path: str, *, evaluation: dict[str, Any], val_split: str, output_dir: Path) -> dict[str, float]:
    """--eval_only: a serving checkpoint on the validation split (`evaluation`: evaluate_detector's keyword
    arguments); rank 0 writes eval.json, detections.json and, with COCO metrics, the report users read (AP per
    class, confusion matrix, worst images) and prints its tables."""
    ctx, dataset = evaluation["ctx"], evaluation["dataset"]
    model, manifest = load_detector(path)
    if manifest["class_names"] != dataset.class_names:
        raise CheckpointError(f"{path} was trained on other classes than {val_split}")
    model.to(ctx.device)
    flat, full, predictions = evaluate_detector(model, **evaluation, verbose=reporting())
    if ctx.is_main:
        write_reports(output_dir, flat=flat, full=full, predictions=predictions,
                      category_ids=dataset.category_ids, precision=evaluation["precision"])  # fmt: skip
        report(f"wrote {output_dir / 'eval.json'}")
        if "coco" in full:
            tables = write_evaluation_report(
                output_dir, dataset=dataset, predictions=predictions, coco=full["coco"],
                load_image=dataset_image_loader(dataset),
            )  # fmt: skip
            report(tables)
            report(f"wrote {output_dir / 'report.json'}, confusion.png/.json, worst_images.jpg")
    return flat


def write_reports(output_dir: Path, *, flat: dict, full: dict, predictions: dict, category_ids, precision: str) -> None:
    """eval.json (headline and full metrics, the precision the detections ran at) and detections.json (COCO
    results format)."""
    report = {name: metrics.as_dict() for name, metrics in full.items()}
    write_json(output_dir / "eval.json", {"headline": flat, "precision": precision, **report})
    write_json(output_dir / "detections.json", to_coco_results(predictions, category_ids=category_ids))
