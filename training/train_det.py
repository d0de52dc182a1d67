"""Train and evaluate Faster R-CNN (C4 or FPN) on COCO- or VOC-layout data, one CPU to many GPUs.

    # quickstart on generated data (CPU, minutes): shapes in COCO and VOC layouts, then train
    python -m detection.data.synthetic --out runs/shapes --num-train 600 --num-val 100 --image-size 192 --seed 0
    python training/train_det.py --recipe synthetic --dataset coco --data_path runs/shapes/coco \\
        --output_dir runs/shapes_r18_fpn
    # COCO 2017 (annotations/instances_train2017.json, train2017/, val2017/), the "1x" schedule, 8 GPUs
    torchrun --standalone --nproc_per_node=8 training/train_det.py --dataset coco --data_path /data/coco \\
        --backbone resnet50 --stride_in_1x1 false --init resnet50-0676ba61.pth --output_dir runs/r50_fpn_1x
    # the paper's recipe (appendix: C4, 600 px, its learning rates and iterations)
    torchrun --standalone --nproc_per_node=8 training/train_det.py --recipe paper_coco --dataset coco \\
        --data_path /data/coco --backbone resnet101 --init runs/resnet101/model.safetensors
    # Pascal VOC "07+12": train on VOC2007+VOC2012 trainval, test on VOC2007 test
    python training/train_det.py --recipe paper_voc --dataset voc --data_path /data/VOCdevkit \\
        --train_split VOC2007/trainval VOC2012/trainval --val_split VOC2007/test --init model.safetensors
    # 2 machines x 8 GPUs (run on every machine; node0 hosts the rendezvous)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=det --rdzv_backend=c10d --rdzv_endpoint=node0:29400 \\
        training/train_det.py --dataset coco --data_path /data/coco --batch_size 32 --output_dir runs/r50
    # CPU processes with gloo (what CI runs): torchrun --standalone --nproc_per_node=2 training/train_det.py ...
    # after an interruption: the same command plus --resume auto (or --resume runs/.../last.pt)
    # evaluate a serving checkpoint only
    python training/train_det.py --dataset coco --data_path /data/coco --eval_only runs/r50/model.safetensors

Writes to --output_dir: last.pt and best.pt (resumable), metrics.jsonl, tensorboard/, loss.png, lr.png,
map.png, pr_<class>.png curves, eval.json (+ detections.json in COCO results format) and
model.safetensors (the serving checkpoint, its manifest holding the measured metrics).
"""

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from backbone.flags import option, with_default
from backbone.weights import CheckpointError
from detection import DetectorOptions, build_detector, load_detector, save_detector
from detection.data import (
    DEFAULT_WORKERS,
    VOC_CLASSES,
    AnnotationError,
    CocoDetection,
    ConcatDetection,
    VocDetection,
    aspect_ratio_group_ids,
    build_transforms,
    read_class_names,
)
from detection.data import collate_fn as detection_collate
from detection.ensemble import EnsembleDetector
from detection.evaluation import to_coco_results, write_json
from detection.evaluation.report import dataset_image_loader, write_evaluation_report
from detection.pretrained import detector_architecture, initialise_detector
from detection.test_time import TestTimeOptions
from detection.transform import batch_to_device
from training.config import config_to_dict, format_config, make_config, parse_config
from training.det_evaluation import detect_shard, score
from training.distributed import barrier
from training.loop import (
    BestMetric,
    describe_run,
    iterate_batches,
    log_training,
    make_loader,
    prepare_model,
    run_command,
    seed_per_rank,
    start_process,
    train_step,
    unwrap_model,
)
from training.meters import MetricWindow
from training.plots import plot_detection_run
from training.precision import Precision
from training.provenance import run_provenance
from training.run_checkpoint import RunCheckpoints
from training.run_log import RunLog
from training.run_options import RunOptions
from training.sampler import ResumableBatchSampler, SeededDataset
from training.schedule import LRSchedule

# Splits when --train_split / --val_split are not given: COCO 2017's names, VOC's ImageSets/Main names.
DEFAULT_SPLITS = {"coco": (("train2017",), "val2017"), "voc": (("train",), "val")}


# Multi-scale training (detectron2's and torchvision's "1x"): one shorter side drawn per image, the last for testing.
TRAIN_MIN_SIZES = (640, 672, 704, 736, 768, 800)


@dataclass
class DetTrainConfig(RunOptions):
    """Every setting of a detection run. Defaults: the modern "1x" schedule (detectron2/torchvision).

    The detector's own options are one nested `DetectorOptions` (detection/options.py): its fields are
    flags of this command under their own names (`--min_size`, `--box_head`) and go to build_detector whole.
    """

    # --- data
    dataset: str = option("", '"coco" (any COCO-format instances json) or "voc" (VOC folder layout).')
    data_path: str = option(
        "", "COCO: the folder holding annotations/instances_<split>.json and <split>/; VOC: the folder holding the "
        "VOC folders.",
    )  # fmt: skip
    train_split: tuple[str, ...] = option(
        (), "Training splits, several are concatenated; none given means train2017 (COCO) or train (VOC); VOC "
        "names a folder too, e.g. VOC2007/trainval.",
    )  # fmt: skip
    val_split: str = option("", 'The validation split; "" means val2017 (COCO) or val (VOC); e.g. "VOC2007/test".')
    keep_empty: bool = option(False, "Keep training images without boxes (torchvision's reference drops them).")
    flip_prob: float = option(
        0.5, "Probability of a horizontal flip (paper: flipping, Faster R-CNN's only augmentation)."
    )
    group_aspect_ratio: bool = option(True, "Batch images of similar aspect ratio together (less padding).")
    workers: int = option(DEFAULT_WORKERS, "DataLoader workers per rank: 4, or the cores this process has if fewer.")
    # --- model
    backbone: str = option("resnet50", "The backbone: resnet18..152 or plain18..152.")
    head: str = option("fpn", '"fpn", or "c4" (the paper\'s appendix).')
    detector: DetectorOptions = option(
        DetectorOptions(min_size=TRAIN_MIN_SIZES), "The detector's options (each is a flag of its own)."
    )
    test_time: TestTimeOptions = option(
        TestTimeOptions(), "How evaluation runs the detector: the test-time ladder (each is a flag of its own; the "
        "defaults run the plain detector).",
    )  # fmt: skip
    init: str = option(
        "", '"" trains from scratch; a classifier (.safetensors of pretrain.py, torchvision ResNet .pth) initialises '
        "the backbone; a detector (our .safetensors, torchvision Faster R-CNN .pth) initialises the whole model "
        "and fixes its architecture.",
    )  # fmt: skip
    # --- optimisation: SGD; the "1x" schedule: lr 0.02 at batch 16, steps at 2/3 and 8/9, 1000-it warm-up
    batch_size: int = option(
        16,
        "Global batch size: images per iteration over all processes together (torchvision's --batch-size "
        "counts per process).",
    )
    lr: float = option(
        0.02, "Learning rate at lr_reference_batch, scaled linearly with batch_size (Goyal et al. 2017)."
    )
    lr_reference_batch: int = option(16, "The batch size at which lr applies unscaled.")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(1e-4, "SGD weight decay.")
    max_iterations: int = option(90000, "Training length in iterations.")
    lr_milestones: tuple[int, ...] = option(
        (), "Iterations at which the learning rate is divided by 10; none given means 2/3 and 8/9 of max_iterations."
    )
    warmup_iterations: int = option(1000, "Iterations of the linear warm-up.")
    warmup_factor: float = option(0.001, "The warm-up ramps linearly from lr * warmup_factor.")
    max_grad_norm: float = option(0.0, "Gradient norm clipping threshold; 0 means no clipping.")
    # --- evaluation
    metrics: tuple[str, ...] = option(
        (), '"coco" and/or "voc"; none given means coco for COCO data, both for VOC data.'
    )
    eval_every: int = option(0, "Iterations between evaluations; 0 means once per epoch.")
    eval_batch_size: int = option(2, "Evaluation batch per rank.")
    eval_only: str = option("", "A model.safetensors to evaluate instead of training.")
    ensemble_checkpoints: tuple[str, ...] = option(
        (), "With --eval_only: more detector checkpoints evaluated with it as one ensemble (its proposals, every "
        "model's class probabilities and box deltas averaged on them, then NMS and box voting).",
    )  # fmt: skip
    # --- infrastructure (the rest, shared with pretrain.py, in training/run_options.py)
    output_dir: str = with_default(RunOptions, "output_dir", "runs/detection")  # each command its own folder
    channels_last: str = option(
        "auto", '"auto" (on for CPU, off for CUDA: measured per device), "true" or "false": the model in the '
        "channels-last memory format.",
        switch=True,
    )  # fmt: skip
    compile: bool = option(False, "Compile the feature extractor (backbone + FPN) with torch.compile.")


RECIPES = {
    "1x": {},  # the defaults
    # ResNet paper, appendix (COCO): 8 GPUs, 8 images per RPN mini-batch, 16 per Fast R-CNN one; lr 0.001 for
    # 240k iterations, 0.0001 for 80k more; 600 px. Departures: we train RPN and Fast R-CNN jointly (one
    # batch of 8) instead of the paper's alternating steps, and keep a short warm-up off.
    "paper_coco": dict(
        head="c4", min_size=(600,), max_size=1000, batch_size=8, lr=0.001, lr_reference_batch=8,
        max_iterations=320000, lr_milestones=(240000,), warmup_iterations=0, box_batch_size_per_image=128,
    ),
    # VOC, with Faster R-CNN's hyper-parameters (the ResNet paper keeps them): lr 0.001 for 60k mini-batches
    # of one image, 0.0001 for 20k more; 600 px.
    "paper_voc": dict(
        head="c4", min_size=(600,), max_size=1000, batch_size=1, lr=0.001, lr_reference_batch=1,
        max_iterations=80000, lr_milestones=(60000,), warmup_iterations=0, box_batch_size_per_image=128,
    ),
    # generated shapes from scratch on a CPU (quickstart, demo model, CI): a narrow ResNet-18 (width 16, a
    # quarter of the paper's), small images, BN trained (nothing pretrained to freeze)
    "synthetic": dict(
        backbone="resnet18", head="fpn", base_width=16, fpn_channels=64, representation_size=256, frozen_bn=False,
        freeze_at=0, min_size=(128,), max_size=128, anchor_sizes=(16, 32, 64, 128, 256), batch_size=4, lr=0.02,
        lr_reference_batch=8, max_iterations=2000, warmup_iterations=100, rpn_post_nms_top_n_train=500,
        rpn_post_nms_top_n_test=300, box_batch_size_per_image=128, eval_every=500, workers=1,
        train_split=("train",), val_split="val",
    ),
}  # fmt: skip
# The same for the paper's C4 head: it learns more slowly from scratch (held-out AP50 0.39 / 0.61 / 0.82 /
# 0.93 at 500 / 1000 / 1500 / 2000 iterations with lr still 0.01), so twice the schedule: AP50 0.990, AP 0.858
# at 4000 (docs/BENCHMARKS.md).
RECIPES["synthetic_c4"] = dict(RECIPES["synthetic"], head="c4", max_iterations=4000)


def resolve_splits(cfg: DetTrainConfig) -> tuple[tuple[str, ...], str]:
    """(train splits, val split): the flags, or the dataset kind's default names where they are empty."""
    default_train, default_val = DEFAULT_SPLITS.get(cfg.dataset, ((), ""))
    return cfg.train_split or default_train, cfg.val_split or default_val


def check_frozen_layers(cfg: DetTrainConfig) -> None:
    """Frozen layers only make sense on pretrained weights: frozen random layers never learn, and a frozen
    BN with its initial statistics is the identity (no normalisation at all)."""
    frozen_bn, freeze_at = cfg.detector.frozen_bn, cfg.detector.freeze_at
    if cfg.init or cfg.eval_only or not (frozen_bn or freeze_at > 0):
        return
    raise ValueError(
        f"training from scratch (no --init) with frozen_bn={str(frozen_bn).lower()}, freeze_at={freeze_at} "
        "would keep randomly initialised layers fixed: pass --frozen_bn false --freeze_at 0 to train every layer, "
        "or --init with pretrained weights (a classifier or detector checkpoint)"
    )


def with_init_architecture(cfg: DetTrainConfig) -> DetTrainConfig:
    """A whole-detector --init (our .safetensors or a torchvision Faster R-CNN .pth, v1 or v2) fixes the
    architecture: backbone, head and the options that decide which tensors exist come from the file."""
    architecture = detector_architecture(cfg.init) if cfg.init and not cfg.eval_only else {}
    if not architecture:
        return cfg
    own = {"backbone": cfg.backbone, "head": cfg.head, **cfg.detector.to_dict()}
    changed = {key: value for key, value in architecture.items() if own[key] != value}
    if changed:
        print(f"--init {cfg.init} is a detector of another architecture; taking from it: {changed}", flush=True)
    return make_config(DetTrainConfig, {**config_to_dict(cfg), **architecture})


def detection_channels_last(setting: str, device: torch.device) -> bool:
    """channels_last for detection training: "auto" follows what was measured on each device (NHWC was
    faster on this project's CPU, slower for the ResNet-50 FPN step on an H200: 29.8-31.5 vs 25.0 ms)."""
    if setting == "auto":
        return device.type == "cpu"
    if setting not in ("true", "false"):
        raise ValueError(f"--channels_last must be auto, true or false, got {setting!r}")
    return setting == "true"


def build_datasets(cfg: DetTrainConfig, *, eval_only: bool):
    """(train, val): COCO splits are <data_path>/annotations/instances_<split>.json + <data_path>/<split>/."""
    if cfg.dataset not in ("coco", "voc"):
        raise ValueError(
            "pass --dataset coco (any COCO-format json) or --dataset voc, and --data_path (see --help); "
            "for a first run generate data: python -m detection.data.synthetic --out runs/shapes"
        )
    if not cfg.data_path:
        raise ValueError("pass --data_path: the folder holding the dataset (see --help)")
    root = Path(cfg.data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_path {root} is not a folder")
    # uint8 out of the workers (a quarter of float32's bytes to pin and copy); batch_to_device makes floats
    train_transform = build_transforms(flip_prob=cfg.flip_prob, to_float=False)  # the detector resizes
    eval_transform = build_transforms(to_float=False)

    def load(split: str, *, transforms, keep_empty: bool):
        if cfg.dataset == "coco":
            return CocoDetection(
                root / "annotations" / f"instances_{split}.json", root / split, keep_empty=keep_empty,
                transforms=transforms,
            )  # fmt: skip
        folder, _, image_set = split.rpartition("/")
        # a custom VOC-layout dataset lists its classes in classes.txt (one per line, label order)
        names_file = root / folder / "classes.txt"
        class_names = read_class_names(names_file) if names_file.is_file() else VOC_CLASSES
        return VocDetection(
            root / folder, image_set, class_names=class_names, keep_empty=keep_empty, transforms=transforms
        )

    train_splits, val_split = resolve_splits(cfg)
    val = load(val_split, transforms=eval_transform, keep_empty=True)
    if eval_only:
        return None, val
    # the augmentation runs in SeededDataset (seeded per sample, for exact resume), not in the dataset
    parts = [load(split, transforms=None, keep_empty=cfg.keep_empty) for split in train_splits]
    train = parts[0] if len(parts) == 1 else ConcatDetection(parts)
    if train.class_names != val.class_names:
        raise ValueError(f"training classes {train.class_names} differ from validation classes {val.class_names}")
    return SeededDataset(train, train_transform, joint=True), val


def detection_loss(net: torch.nn.Module, batch, *, device: torch.device, num_classes: int):
    """The detector's summed losses on a collated batch, with each loss as a detached metric."""
    images, targets = batch_to_device(*batch, device=device, num_classes=num_classes)
    losses, _ = net(images, targets, targets_prepared=True)
    return sum(losses.values()), losses


def evaluate_detector(
    model: torch.nn.Module,
    *,
    loader,
    dataset,
    metric_sets: tuple[str, ...],
    ctx,
    precision: Precision,
    verbose: bool,
    test_time: TestTimeOptions,
) -> tuple[dict[str, float], dict, dict]:
    """(headline metrics and validation losses, full metric objects, merged predictions) on the whole val set."""
    predictions, val_losses = detect_shard(model, loader, ctx=ctx, autocast=precision.autocast, test_time=test_time)
    flat, full = score(dataset, predictions, metric_sets=metric_sets, verbose=verbose and ctx.is_main)
    return {**flat, **val_losses}, full, predictions


def write_reports(output_dir: Path, *, flat: dict, full: dict, predictions: dict, category_ids) -> None:
    """eval.json (headline and full metrics) and detections.json (COCO results format)."""
    report = {name: metrics.as_dict() for name, metrics in full.items()}
    write_json(output_dir / "eval.json", {"headline": flat, **report})
    write_json(output_dir / "detections.json", to_coco_results(predictions, category_ids=category_ids))


def main(cfg: DetTrainConfig) -> dict[str, float]:
    cfg = with_init_architecture(cfg)
    ctx = start_process(device=cfg.device, seed=cfg.seed)
    output_dir = Path(cfg.output_dir)
    if ctx.is_main:
        print(format_config(cfg), flush=True)
        print(describe_run(ctx, global_batch_size=cfg.batch_size), flush=True)
    precision = Precision(amp=cfg.amp, device=ctx.device)
    metric_sets = cfg.metrics or (("coco",) if cfg.dataset == "coco" else ("coco", "voc"))

    if cfg.test_time != TestTimeOptions() and not cfg.eval_only:
        raise ValueError(
            "the test-time options (--refine_boxes, --test_flip, --tile_size, ...) apply to --eval_only: train "
            "without them, then evaluate the checkpoint with them"
        )

    if cfg.ensemble_checkpoints and not cfg.eval_only:
        raise ValueError("--ensemble_checkpoints evaluates with --eval_only: it adds models to that one")

    # --- data
    train_data, val_data = build_datasets(cfg, eval_only=bool(cfg.eval_only))
    check_frozen_layers(cfg)
    train_splits, val_split = resolve_splits(cfg)
    eval_loader = make_loader(
        val_data, sampler=list(range(ctx.rank, len(val_data), ctx.world_size)), batch_size=cfg.eval_batch_size,
        workers=cfg.workers, device=ctx.device, collate_fn=detection_collate,
    )  # fmt: skip
    evaluation = dict(
        loader=eval_loader, dataset=val_data, metric_sets=metric_sets, ctx=ctx, precision=precision,
        test_time=cfg.test_time,
    )  # fmt: skip

    # --- evaluation only
    if cfg.eval_only:
        model, manifest = load_detector(cfg.eval_only)
        if manifest["class_names"] != val_data.class_names:
            raise CheckpointError(f"{cfg.eval_only} was trained on other classes than {val_split}")
        if cfg.ensemble_checkpoints:
            model = EnsembleDetector([model, *(load_detector(path)[0] for path in cfg.ensemble_checkpoints)])
        model.to(ctx.device)
        flat, full, predictions = evaluate_detector(model, **evaluation, verbose=True)
        if ctx.is_main:
            write_reports(output_dir, flat=flat, full=full, predictions=predictions,
                          category_ids=val_data.category_ids)  # fmt: skip
            print(f"wrote {output_dir / 'eval.json'}", flush=True)
            if "coco" in full:
                tables = write_evaluation_report(
                    output_dir, dataset=val_data, predictions=predictions, coco=full["coco"],
                    load_image=dataset_image_loader(val_data),
                )  # fmt: skip
                print(tables, flush=True)
                print(f"wrote {output_dir / 'report.json'}, confusion.png/.json, worst_images.jpg", flush=True)
        return flat

    train_base = train_data.dataset
    if ctx.is_main:
        print(
            f"{len(train_base)} training images ({getattr(train_base, 'num_empty_images_removed', 0)} without boxes "
            f"left out), {len(val_data)} validation images, {len(val_data.class_names)} classes; "
            f"{getattr(train_base, 'num_degenerate_boxes', 0)} degenerate boxes dropped",
            flush=True,
        )

    # --- sampler and loader
    sampler = ResumableBatchSampler(
        dataset_size=len(train_data), global_batch_size=cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size,
        seed=cfg.seed, group_ids=aspect_ratio_group_ids(train_base) if cfg.group_aspect_ratio else None,
    )  # fmt: skip
    train_loader = make_loader(
        train_data, batch_sampler=sampler, workers=cfg.workers, device=ctx.device, collate_fn=detection_collate
    )
    steps_per_epoch = sampler.steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    checkpoint_every = cfg.checkpoint_every or eval_every

    # --- model and optimizer
    model = build_detector(
        backbone=cfg.backbone, head=cfg.head, num_classes=len(val_data.class_names),
        class_names=val_data.class_names, **cfg.detector.to_dict(),
    )  # fmt: skip
    if cfg.init:
        described = initialise_detector(model, cfg.init)
        if ctx.is_main:
            print(f"initialised {described} from {cfg.init}", flush=True)
    if cfg.compile:
        # The feature extractor only: the whole detector broke into 36 graphs (torchvision's sampling
        # .item(), boolean indexing, RoIAlign's wrapper); compile() in place keeps the state-dict keys.
        model.features.compile()
    train_model = prepare_model(model, ctx=ctx, channels_last=detection_channels_last(cfg.channels_last, ctx.device))
    compute_loss = partial(detection_loss, device=ctx.device, num_classes=model.num_classes)
    # Each rank its own torch stream from here (multi-scale sizes, RPN/RoI sampling); the model above was
    # built from the shared seed. Resume restores every rank's own stream.
    seed_per_rank(cfg.seed, ctx)
    # No weight decay on frozen parameters: they take no step at all.
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    # --- schedule
    milestones = cfg.lr_milestones or (cfg.max_iterations * 2 // 3, cfg.max_iterations * 8 // 9)
    schedule = LRSchedule(
        base_lr=cfg.lr * cfg.batch_size / cfg.lr_reference_batch, milestones=milestones,
        warmup_iterations=cfg.warmup_iterations, warmup_factor=cfg.warmup_factor, warmup_method="linear",
    )  # fmt: skip

    # --- resume
    window = MetricWindow()
    headline = "AP50" if "coco" in metric_sets else "voc_area_mAP"
    best = BestMetric(key="best_map", higher_is_better=True)  # of the headline metric
    checkpoints = RunCheckpoints(
        output_dir=output_dir, ctx=ctx, config=config_to_dict(cfg), class_names=val_data.class_names, model=model,
        optimizer=optimizer, schedule=schedule, scaler=precision.scaler, window=window, best=best,
    )  # fmt: skip
    start_iteration = checkpoints.resume(cfg.resume)
    run_log = RunLog(
        output_dir=output_dir, ctx=ctx, total_iterations=cfg.max_iterations, start_iteration=start_iteration,
        images_per_iteration=cfg.batch_size, tensorboard=cfg.tensorboard,
    )  # fmt: skip
    run_log.print(f"{steps_per_epoch} iterations per epoch, {cfg.max_iterations} in all, lr steps at {milestones}")

    # --- train
    train_model.train()
    results: dict[str, float] = {}
    for step in iterate_batches(
        train_loader, sampler, start_iteration=start_iteration, max_iterations=cfg.max_iterations
    ):
        lr = schedule.apply(optimizer, step.iteration)
        window.update(
            train_step(
                model=train_model, batch=step.batch, compute_loss=compute_loss, optimizer=optimizer,
                precision=precision, max_grad_norm=cfg.max_grad_norm,
            )
        )  # fmt: skip
        run_log.step()
        if step.due(cfg.log_every):
            log_training(window, step=step, lr=lr, steps_per_epoch=steps_per_epoch, ctx=ctx, run_log=run_log)
        is_best = False
        if step.due(eval_every):
            results, full, predictions = evaluate_detector(model, **evaluation, verbose=step.finished)
            run_log.log("eval", step.done, results)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if not k.startswith("val_"))
            run_log.print(f"iteration {step.done}: {shown}")
            is_best = best.update(results[headline])
            if step.finished and ctx.is_main:
                write_reports(output_dir, flat=results, full=full, predictions=predictions,
                              category_ids=val_data.category_ids)  # fmt: skip
        if step.due(checkpoint_every) or is_best:
            checkpoints.save(iteration=step.done, epoch=step.epoch, is_best=is_best)

    # --- the serving checkpoint, with the measured metrics in its manifest
    run_log.close()
    if ctx.is_main and not results:
        print("no training iteration left to run (resumed at the end?): nothing new to evaluate", flush=True)
    if ctx.is_main and results:
        save_detector(
            output_dir / "model.safetensors",
            model=unwrap_model(train_model),
            provenance={
                **run_provenance(cfg, iterations=cfg.max_iterations, processes=ctx.world_size),
                "dataset": {"kind": cfg.dataset, "train": list(train_splits), "val": val_split},
            },
            metrics={**results, "evaluated_on": val_split, "iterations": cfg.max_iterations},
        )
        for path in plot_detection_run(output_dir, precision_recall=full):
            print(f"wrote {path}", flush=True)
        print(f"wrote {output_dir / 'model.safetensors'}", flush=True)
        print(json.dumps({k: round(v, 4) for k, v in results.items()}), flush=True)
    barrier(ctx)
    return results


if __name__ == "__main__":
    config = parse_config(DetTrainConfig, description=__doc__, recipes=RECIPES)
    run_command(main, config, user_errors=(AnnotationError, CheckpointError, FileNotFoundError, ValueError))
