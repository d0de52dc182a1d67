"""Pretrain a ResNet classifier with the paper's recipes: ImageNet (Sec. 3.4) and CIFAR-10 (Sec. 4.2).

    # CIFAR-10 JPEG class folders from a tarball (extracted once into data_cache/), ResNet-20, paper recipe
    python training/pretrain.py --recipe cifar10 --data_path ../shared/data/cifar10-jpeg.tar.gz \
        --model cifar_resnet20 --output_dir runs/cifar_resnet20
    # CIFAR-10 as the original python batches (folder holding cifar-10-batches-py/; nothing is downloaded)
    python training/pretrain.py --recipe cifar10 --dataset cifar10 --data_path /data/cifar10
    # ResNet-110: the paper's 0.01 warm-up until training error < 80%
    python training/pretrain.py --recipe cifar10_warmup --data_path ../shared/data/cifar10-jpeg.tar.gz
    # ImageNet (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG), 8 GPUs on one machine, batch 256 in all
    torchrun --standalone --nproc_per_node=8 training/pretrain.py --recipe imagenet \
        --data_path /data/imagenet --model resnet50 --output_dir runs/resnet50
    # the same on 2 machines x 8 GPUs: run this on every machine (node0 hosts the rendezvous)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=resnet50 --rdzv_backend=c10d \
        --rdzv_endpoint=node0:29400 training/pretrain.py --recipe imagenet --data_path /data/imagenet \
        --model resnet50 --batch_size 512 --output_dir runs/resnet50
    # CPU processes with gloo (what CI runs): torchrun --standalone --nproc_per_node=2 training/pretrain.py ...
    # after an interruption (kill, preemption): the same command plus
    ... --resume auto            # or --resume runs/resnet50/last.pt
    # evaluate a serving checkpoint only: centre crop, 10-crop and multi-scale
    python training/pretrain.py --recipe imagenet --data_path /data/imagenet --eval_only runs/resnet50/model.safetensors

Writes to --output_dir: last.pt and best.pt (resumable training checkpoints), metrics.jsonl,
tensorboard/, error.png (Fig. 4/6 style), loss.png, lr.png, and model.safetensors (the serving
checkpoint: /classify serves it, detection training initialises its backbone from it).
"""

from pathlib import Path

from training.config import parse_command
from training.pretrain_config import RECIPES, PretrainConfig

# torch, the model and the data readers load when the command runs (in main), so that --help answers at once

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(cfg: PretrainConfig) -> dict[str, float]:
    from functools import partial

    import torch

    from backbone import create_model
    from backbone.preprocessing import ClassifierPreprocessing
    from backbone.serving_checkpoint import save_classifier
    from training.classification_data import DatasetError, build_dataset, extract_once, find_split_root
    from training.config import config_to_dict, format_config
    from training.device_cifar import DeviceImages, DeviceTrainBatches, Normalizer, load_cifar_arrays
    from training.distributed import barrier
    from training.evaluation import EvalLoaders, evaluate, evaluate_classifier_checkpoint, final_evaluation
    from training.loop import (
        BestMetric,
        describe_run,
        iterate_batches,
        log_training,
        make_loader,
        prepare_model,
        start_process,
        train_step,
    )  # fmt: skip
    from training.losses import classification_loss
    from training.meters import MetricWindow
    from training.plots import plot_run
    from training.precision import Precision
    from training.provenance import run_provenance
    from training.run_checkpoint import RunCheckpoints
    from training.run_log import RunLog, report
    from training.sampler import ResumableBatchSampler, SeededDataset
    from training.schedule import LRSchedule
    from training.transforms import train_transform_for

    # --- data: folders (or an archive of them) or the CIFAR-10 python batches
    if not cfg.data_path:
        raise DatasetError("no dataset given: pass --data_path (a folder with train/ and val/, or an archive)")
    data_root = Path(cfg.data_path)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else REPO_ROOT / "data_cache"
    if data_root.is_file() and not cfg.data_on_device:  # on the device, archives are decoded without extracting
        # Before the process group forms: extracting ImageNet takes longer than NCCL's 10-minute timeout,
        # which aborted the ranks waiting at a barrier. One process per node extracts (a file lock).
        data_root = find_split_root(extract_once(data_root, cache_dir), cfg.val_split)

    ctx = start_process(device=cfg.device, seed=cfg.seed)
    output_dir = Path(cfg.output_dir)
    report(format_config(cfg), ctx=ctx)
    report(describe_run(ctx, global_batch_size=cfg.batch_size), ctx=ctx)
    if cfg.data_on_device:
        if cfg.augmentation != "cifar":
            raise ValueError("--data_on_device true holds CIFAR-sized sets only: use it with --augmentation cifar")
        arrays = load_cifar_arrays(
            data_root, kind=cfg.dataset, train_split=cfg.train_split, test_split=cfg.val_split, cache_dir=cache_dir
        )
        on_device = dict(classes=arrays.classes, padding=cfg.padding, device=ctx.device)
        train_base = DeviceImages(arrays.train_images, arrays.train_labels, **on_device)
        val_base = DeviceImages(arrays.test_images, arrays.test_labels, **on_device)
        normalizer = Normalizer(mean=cfg.mean, std=cfg.std, device=ctx.device)
    else:
        val_base = build_dataset(kind=cfg.dataset, root=data_root, split=cfg.val_split, decoder=cfg.decoder)
    class_names = list(val_base.classes)
    precision = Precision(amp=cfg.amp, device=ctx.device)
    per_rank_batch = cfg.batch_size // ctx.world_size
    eval_batch = cfg.eval_batch_size or max(per_rank_batch, 1)

    # --- evaluation only: a serving checkpoint on the validation split, with its own preprocessing
    if cfg.eval_only:
        return evaluate_classifier_checkpoint(
            cfg.eval_only, cfg=cfg, dataset=val_base, split=data_root / cfg.val_split, ctx=ctx, precision=precision,
            batch_size=eval_batch,
        )  # fmt: skip

    if not cfg.data_on_device:
        train_base = build_dataset(kind=cfg.dataset, root=data_root, split=cfg.train_split, decoder=cfg.decoder)
    if list(train_base.classes) != class_names:
        raise DatasetError(
            f"classes of {data_root / cfg.train_split} and {data_root / cfg.val_split} differ: "
            f"{sorted(set(train_base.classes) ^ set(class_names))[:10]}"
        )
    train_transform = train_transform_for(cfg)
    # what the serving checkpoint records, and the centre view every evaluation uses
    preprocessing = ClassifierPreprocessing(
        size=cfg.crop_size, resize=cfg.eval_resize, mean=tuple(cfg.mean), std=tuple(cfg.std)
    )
    eval_loaders = EvalLoaders(cfg, preprocessing=preprocessing, dataset=val_base, ctx=ctx, batch_size=eval_batch)

    # --- sampler and loader
    sampler = ResumableBatchSampler(
        dataset_size=len(train_base), global_batch_size=cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size,
        seed=cfg.seed,
    )  # fmt: skip
    if cfg.data_on_device:
        train_loader = DeviceTrainBatches(train_base, sampler=sampler, crop_size=cfg.crop_size, normalizer=normalizer)
    else:
        train_loader = make_loader(
            SeededDataset(train_base, train_transform), batch_sampler=sampler, workers=cfg.workers, device=ctx.device
        )
    steps_per_epoch = sampler.steps_per_epoch
    max_iterations = cfg.max_iterations or cfg.epochs * steps_per_epoch
    unit = {"epochs": steps_per_epoch, "iterations": 1}[cfg.schedule_unit]
    eval_every = cfg.eval_every or steps_per_epoch
    checkpoint_every = cfg.checkpoint_every or eval_every

    # --- model and optimizer
    model = create_model(
        cfg.model, num_classes=len(class_names), norm=cfg.norm, zero_init_residual=cfg.zero_init_residual
    )
    train_model = prepare_model(
        model, ctx=ctx, channels_last=cfg.channels_last, compile_model=cfg.compile, compile_mode=cfg.compile_mode,
        sync_bn=cfg.sync_bn,
    )  # fmt: skip
    cuda_graphs = cfg.compile and cfg.compile_mode == "reduce-overhead" and ctx.device.type == "cuda"
    compute_loss = partial(
        classification_loss, device=ctx.device,
        memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format,
    )  # fmt: skip
    # Weight decay on every parameter, BN's included, as the paper's Torch code (fb.resnet.torch).
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    # --- schedule
    schedule = LRSchedule(
        base_lr=cfg.lr * cfg.batch_size / cfg.lr_reference_batch,
        milestones=[m * unit for m in cfg.lr_milestones],
        warmup_iterations=cfg.warmup_iterations,
        warmup_factor=cfg.warmup_factor,
        plateau_patience=cfg.plateau_patience,
    )

    # --- resume
    window = MetricWindow()
    best = BestMetric(key="best_top1_error", higher_is_better=False)
    checkpoints = RunCheckpoints(
        output_dir=output_dir, ctx=ctx, config=config_to_dict(cfg), class_names=class_names, model=model,
        optimizer=optimizer, schedule=schedule, scaler=precision.scaler, window=window, best=best,
    )  # fmt: skip
    start_iteration = checkpoints.resume(cfg.resume)
    run_log = RunLog(
        output_dir=output_dir, ctx=ctx, total_iterations=max_iterations, start_iteration=start_iteration,
        images_per_iteration=cfg.batch_size, tensorboard=cfg.tensorboard,
    )  # fmt: skip
    run_log.print(
        f"{len(train_base)} training images, {len(val_base)} validation images, {len(class_names)} classes; "
        f"{steps_per_epoch} iterations per epoch, {max_iterations} in all"
    )

    # --- train
    train_model.train()
    for step in iterate_batches(train_loader, sampler, start_iteration=start_iteration, max_iterations=max_iterations):
        lr = schedule.apply(optimizer, step.iteration)
        window.update(
            train_step(
                model=train_model, batch=step.batch, compute_loss=compute_loss, optimizer=optimizer,
                precision=precision, cuda_graphs=cuda_graphs,
            )
        )  # fmt: skip
        run_log.step()
        if step.due(cfg.log_every):
            values = log_training(window, step=step, lr=lr, steps_per_epoch=steps_per_epoch, ctx=ctx, run_log=run_log)
            if schedule.in_warmup(step.done) and values["error"] < cfg.warmup_until_error:
                schedule.end_warmup(step.done)
                run_log.print(f"warm-up ends at iteration {step.done} (training error {100 * values['error']:.1f}%)")
        is_best = False
        if step.due(eval_every):
            errors = evaluate(
                model, eval_loaders["center"], mode="center", ctx=ctx, autocast=precision.autocast,
                channels_last=cfg.channels_last,
            )  # fmt: skip
            run_log.log("eval", step.done, {k: errors[k] for k in ("top1_error", "top5_error")})
            run_log.print(
                f"iteration {step.done}: test top-1 error {100 * errors['top1_error']:.2f}%, "
                f"top-5 {100 * errors['top5_error']:.2f}%"
            )
            if schedule.observe(errors["top1_error"]):
                run_log.print(f"validation error plateaued: lr /10 from iteration {step.done}")
            is_best = best.update(errors["top1_error"])
        if step.due(checkpoint_every) or is_best:
            checkpoints.save(iteration=step.done, epoch=step.epoch, is_best=is_best)

    # --- final evaluation and the serving checkpoint
    results = final_evaluation(model, cfg=cfg, loaders=eval_loaders, ctx=ctx, precision=precision)
    run_log.log("final", max_iterations, results)
    run_log.close()
    if ctx.is_main:
        save_classifier(
            output_dir / "model.safetensors",
            model=model,
            architecture=cfg.model,
            class_names=class_names,
            preprocessing=preprocessing.to_manifest(),
            provenance=run_provenance(cfg, iterations=max_iterations, processes=ctx.world_size),
            metrics={**results, "iterations": max_iterations},
        )
        for path in plot_run(output_dir, label=cfg.model):
            report(f"wrote {path}")
        report(f"wrote {output_dir / 'model.safetensors'}")
    barrier(ctx)
    return results


if __name__ == "__main__":
    config = parse_command(PretrainConfig, description=__doc__, recipes=RECIPES)
    from backbone.weights import CheckpointError
    from training.classification_data import DatasetError
    from training.loop import run_command

    run_command(main, config, user_errors=(CheckpointError, DatasetError, FileNotFoundError, ValueError))
