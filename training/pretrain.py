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

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from backbone import create_model
from backbone.flags import option, with_default
from backbone.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ClassifierPreprocessing
from backbone.serving_checkpoint import load_classifier, save_classifier
from backbone.weights import CheckpointError
from training.classification_data import DatasetError, build_dataset, extract_once, find_split_root
from training.config import config_to_dict, format_config, parse_config
from training.device_data import (
    DeviceEvalBatches,
    DeviceImages,
    DeviceTrainBatches,
    Normalizer,
    load_cifar_arrays,
)
from training.distributed import barrier
from training.evaluation import PAPER_TEST_SCALES, collate_list, evaluate
from training.loop import (
    BestMetric,
    describe_run,
    iterate_batches,
    log_training,
    make_loader,
    prepare_model,
    run_command,
    start_process,
    train_step,
)
from training.meters import MetricWindow
from training.plots import plot_run
from training.precision import Precision
from training.provenance import run_provenance
from training.run_checkpoint import RunCheckpoints
from training.run_log import RunLog
from training.run_options import RunOptions
from training.sampler import ResumableBatchSampler, SeededDataset
from training.schedule import LRSchedule
from training.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cifar_train_transform,
    imagenet_train_transform,
    ten_crop_transform,
    whole_image_transform,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PretrainConfig(RunOptions):
    """Every setting of a pretraining run. The defaults are the paper's ImageNet recipe (Sec. 3.4)."""

    # --- data
    dataset: str = option(
        "folder", '"folder": data_path/<split>/<class>/<images>; "cifar10": the python batches (cifar-10-batches-py).'
    )
    data_path: str = option("", "A folder, or a .tar/.tar.gz of one (extracted once into cache_dir).")
    train_split: str = option("train", "The training split: a sub-folder of data_path (or a CIFAR-10 part).")
    val_split: str = option("val", "The validation split: a sub-folder of data_path (CIFAR-10: test).")
    cache_dir: str = option("", 'Where archives are extracted; "" means data_cache/ in the repository (gitignored).')
    decoder: str = option("pil", '"pil" or "torchvision" (torchvision.io.decode_image) JPEG decoding.')
    workers: int = option(4, "DataLoader worker processes per rank.")
    data_on_device: bool = option(
        False, "CIFAR only: the whole set as uint8 on the training device, cropped and flipped there in batches "
        "(training.device_data): the same pixels as the per-sample path, without a DataLoader.",
    )  # fmt: skip
    # --- model
    model: str = option("resnet50", "Any name of backbone.list_models(); the classifier gets one output per class.")
    norm: str = option("bn", '"bn" (batch norm, as in the paper) or "frozen_bn" (fixed statistics and affine).')
    zero_init_residual: bool = option(
        False, "Start each residual branch's last BN at zero (Goyal et al. 2017; the paper does not use it)."
    )
    # --- optimisation: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 for batch 256 (Sec. 3.4); no dropout
    batch_size: int = option(
        256,
        "Global batch size: images per iteration over all processes together (torchvision's --batch-size "
        "counts per process).",
    )
    lr: float = option(0.1, "Learning rate at lr_reference_batch, scaled linearly with batch_size (Goyal et al. 2017).")
    lr_reference_batch: int = option(256, "The batch size at which lr applies unscaled.")
    momentum: float = option(0.9, "SGD momentum (paper: 0.9).")
    weight_decay: float = option(1e-4, "SGD weight decay (paper: 0.0001).")
    lr_milestones: tuple[int, ...] = option((30, 60), "The learning rate is divided by 10 at each, in schedule_unit.")
    # paper: /10 when the error plateaus, up to 60e4 iterations (~120 epochs); fixed steps are the
    # reproducible standard (torchvision's reference). --plateau_patience N gives the paper's rule.
    schedule_unit: str = option("epochs", '"epochs" or "iterations": the unit of lr_milestones.')
    epochs: int = option(90, "Training length in epochs (unless max_iterations is set).")
    max_iterations: int = option(0, "Training length in iterations; when above 0 it overrides epochs.")
    plateau_patience: int = option(
        0, "Evaluations without improvement before the learning rate is divided by 10 (the paper's rule); 0 is off."
    )
    warmup_iterations: int = option(0, "Upper bound on the warm-up, in iterations.")
    warmup_factor: float = option(1.0, "Learning rate multiplier during the warm-up.")
    warmup_until_error: float = option(
        0.0, "End the warm-up once the training error falls below this (Sec. 4.2, ResNet-110: 0.8)."
    )
    # --- augmentation
    augmentation: str = option(
        "imagenet", '"imagenet" (scale + crop + flip + PCA lighting) or "cifar" (pad + crop + flip).'
    )
    train_scale_range: tuple[int, ...] = option(
        (256, 480), "Shorter side sampled uniformly from this range (Sec. 3.4)."
    )
    crop_size: int = option(224, "Side of the square training crop and of the centre crop, in pixels.")
    eval_resize: int = option(256, "Shorter side before the centre crop or the 10 crops, in pixels.")
    padding: int = option(4, "CIFAR: pixels padded on each side before the random crop.")
    lighting_std: float = option(0.1, "Strength of AlexNet's PCA colour augmentation; 0 is off.")
    mean: tuple[float, ...] = option(IMAGENET_MEAN, "Per-channel mean subtracted from RGB inputs in [0, 1].")
    std: tuple[float, ...] = option(IMAGENET_STD, "Per-channel standard deviation the inputs are divided by.")
    # --- evaluation
    eval_every: int = option(0, "Iterations between evaluations (centre crop); 0 means once per epoch.")
    final_eval: tuple[str, ...] = option(
        ("center", "ten_crop", "multi_scale"), "Evaluations at the end of training: center, ten_crop, multi_scale."
    )
    test_scales: tuple[int, ...] = option(
        PAPER_TEST_SCALES, "Shorter sides of the multi-scale evaluation (paper: 224, 256, 384, 480, 640)."
    )
    eval_batch_size: int = option(0, "Evaluation batch per rank; 0 means the training batch per rank.")
    eval_only: str = option("", "A model.safetensors to evaluate (final_eval modes) instead of training.")
    # --- infrastructure (the rest, shared with train_det.py, in training/run_options.py)
    output_dir: str = with_default(RunOptions, "output_dir", "runs/pretrain")  # each command its own folder
    channels_last: bool = option(True, "Run the model in the channels-last memory format.")
    compile: bool = option(False, "Compile the model with torch.compile.")
    compile_mode: str = option(
        "default", 'The torch.compile mode; "reduce-overhead" adds CUDA graphs (small nets on CUDA).'
    )
    sync_bn: bool = option(False, "Batch norm statistics over the global batch (CUDA only); the paper's are per GPU.")


CIFAR10_RECIPE = dict(
    model="cifar_resnet20",
    augmentation="cifar",
    crop_size=32,
    eval_resize=32,
    padding=4,
    lighting_std=0.0,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    val_split="test",
    batch_size=128,
    lr=0.1,
    lr_reference_batch=128,  # Sec. 4.2: mini-batch 128, lr 0.1
    lr_milestones=(32000, 48000),
    schedule_unit="iterations",
    max_iterations=64000,  # /10 at 32k, 48k; stop at 64k
    eval_every=1000,
    final_eval=("center",),  # the paper tests CIFAR on the single 32x32 view
)
RECIPES = {
    "imagenet": {},  # the PretrainConfig defaults
    "cifar10": CIFAR10_RECIPE,
    # Sec. 4.2, ResNet-110: lr 0.01 until training error < 80% (about 400 iterations), then 0.1.
    # The 2000-iteration bound is ours: the paper gives none.
    "cifar10_warmup": {
        **CIFAR10_RECIPE,
        "model": "cifar_resnet110",
        "warmup_factor": 0.1,
        "warmup_iterations": 2000,
        "warmup_until_error": 0.8,
    },
}


def classification_loss(
    net: torch.nn.Module, batch, *, device: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of a batch of (images, labels), with the batch's error rate as a detached metric."""
    images, labels = batch
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    labels = labels.to(device, non_blocking=True)
    logits = net(images)
    return F.cross_entropy(logits, labels), {"error": (logits.argmax(dim=1) != labels).float().mean()}


def train_transform_for(cfg: PretrainConfig):
    """The training augmentation the config names: the paper's ImageNet (Sec. 3.4) or CIFAR (Sec. 4.2) one."""
    if cfg.augmentation == "imagenet":
        return imagenet_train_transform(
            scale_range=tuple(cfg.train_scale_range), crop_size=cfg.crop_size, mean=cfg.mean, std=cfg.std,
            lighting_std=cfg.lighting_std,
        )  # fmt: skip
    if cfg.augmentation == "cifar":
        return cifar_train_transform(crop_size=cfg.crop_size, padding=cfg.padding, mean=cfg.mean, std=cfg.std)
    raise ValueError(f"augmentation must be 'imagenet' or 'cifar', got {cfg.augmentation!r}")


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
        if ctx.is_main:
            seconds = time.perf_counter() - started
            print(
                f"{mode:>11}: top-1 error {100 * errors['top1_error']:.2f}%  top-5 error "
                f"{100 * errors['top5_error']:.2f}%  ({errors['count']} images, {seconds:.1f} s)",
                flush=True,
            )
    return results


def main(cfg: PretrainConfig) -> dict[str, float]:
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
    if ctx.is_main:
        print(format_config(cfg), flush=True)
        print(describe_run(ctx, global_batch_size=cfg.batch_size), flush=True)
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
        model, manifest = load_classifier(cfg.eval_only)
        if manifest["class_names"] != class_names:
            raise CheckpointError(f"{cfg.eval_only} was trained on other classes than {data_root / cfg.val_split}")
        model.to(ctx.device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        preprocessing = ClassifierPreprocessing.from_manifest(
            manifest["preprocessing"], stem=model.config.get("stem", "imagenet")
        )
        eval_loaders = EvalLoaders(cfg, preprocessing=preprocessing, dataset=val_base, ctx=ctx, batch_size=eval_batch)
        return final_evaluation(model, cfg=cfg, loaders=eval_loaders, ctx=ctx, precision=precision)

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
            print(f"wrote {path}", flush=True)
        print(f"wrote {output_dir / 'model.safetensors'}", flush=True)
    barrier(ctx)
    return results


if __name__ == "__main__":
    config = parse_config(PretrainConfig, description=__doc__, recipes=RECIPES)
    run_command(main, config, user_errors=(CheckpointError, DatasetError, FileNotFoundError, ValueError))
