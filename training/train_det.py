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

from pathlib import Path

from training.config import parse_command
from training.det_train_config import RECIPES, DetTrainConfig

# torch, the detector and the data readers load when the command runs (in main), so that --help answers at once


def main(cfg: DetTrainConfig) -> dict[str, float]:
    """Train (or with --eval_only evaluate) as the config says; returns the last evaluation's metrics."""
    import json
    import logging
    from functools import partial

    import torch

    from detection import save_detector
    from detection.data import aspect_ratio_group_ids
    from detection.data import collate_fn as detection_collate
    from detection.predictor import resolve_precision
    from training.config import config_to_dict, format_config
    from training.det_data import build_datasets, describe_datasets
    from training.det_evaluation import evaluate_checkpoint, evaluate_detector, evaluation_loader, write_reports
    from training.det_model import build_model, detection_channels_last, with_init_architecture
    from training.det_train_config import check_frozen_layers, check_test_time_options, resolve_splits
    from training.distributed import barrier
    from training.loop import (
        BestMetric,
        describe_run,
        iterate_batches,
        log_training,
        make_loader,
        prepare_model,
        seed_per_rank,
        start_process,
        train_step,
        unwrap_model,
    )
    from training.losses import detection_loss
    from training.meters import MetricWindow
    from training.plots import plot_detection_run
    from training.precision import Precision
    from training.provenance import run_provenance
    from training.run_checkpoint import RunCheckpoints
    from training.run_log import RunLog, report, reporting
    from training.sampler import ResumableBatchSampler
    from training.schedule import LRSchedule

    cfg = with_init_architecture(cfg)
    ctx = start_process(device=cfg.device, seed=cfg.seed)
    output_dir = Path(cfg.output_dir)
    report(format_config(cfg), ctx=ctx)
    report(describe_run(ctx, global_batch_size=cfg.batch_size), ctx=ctx)
    precision = Precision(amp=cfg.amp, device=ctx.device)
    metric_sets = cfg.metrics or (("coco",) if cfg.dataset == "coco" else ("coco", "voc"))
    eval_precision = resolve_precision(cfg.eval_precision, ctx.device)

    check_test_time_options(cfg)

    # --- data
    train_data, val_data = build_datasets(cfg, eval_only=bool(cfg.eval_only))
    check_frozen_layers(cfg)
    train_splits, val_split = resolve_splits(cfg)
    eval_loader = evaluation_loader(val_data, ctx=ctx, batch_size=cfg.eval_batch_size, workers=cfg.workers)
    evaluation = dict(
        loader=eval_loader, dataset=val_data, metric_sets=metric_sets, ctx=ctx, precision=eval_precision,
        test_time=cfg.test_time,
    )  # fmt: skip

    # --- evaluation only
    if cfg.eval_only:
        return evaluate_checkpoint(cfg.eval_only, evaluation=evaluation, val_split=val_split, output_dir=output_dir)

    train_base = train_data.dataset
    report(describe_datasets(train_base, val_data), ctx=ctx)

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
    model = build_model(cfg, class_names=val_data.class_names, ctx=ctx)
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
            results, full, predictions = evaluate_detector(
                model,
                **evaluation,
                verbose=reporting(logging.INFO if step.finished else logging.DEBUG),
                loss_autocast=precision.autocast,
            )
            run_log.log("eval", step.done, results)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if not k.startswith("val_"))
            run_log.print(f"iteration {step.done}: {shown}")
            is_best = best.update(results[headline])
            if step.finished and ctx.is_main:
                write_reports(output_dir, flat=results, full=full, predictions=predictions,
                              category_ids=val_data.category_ids, precision=eval_precision)  # fmt: skip
        if step.due(checkpoint_every) or is_best:
            checkpoints.save(iteration=step.done, epoch=step.epoch, is_best=is_best)

    # --- the serving checkpoint, with the measured metrics in its manifest
    run_log.close()
    if not results:
        report("no training iteration left to run (resumed at the end?): nothing new to evaluate", ctx=ctx)
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
            report(f"wrote {path}")
        report(f"wrote {output_dir / 'model.safetensors'}")
        report(json.dumps({k: round(v, 4) for k, v in results.items()}))
    barrier(ctx)
    return results


if __name__ == "__main__":
    config = parse_command(DetTrainConfig, description=__doc__, recipes=RECIPES)
    from backbone.weights import CheckpointError
    from detection.data import AnnotationError
    from training.loop import run_command

    run_command(main, config, user_errors=(AnnotationError, CheckpointError, FileNotFoundError, ValueError))
