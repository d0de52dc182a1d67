"""Pretraining throughput: our training loop against torchvision's ResNet-50 in a plain loop, and the
input pipeline alone against the training step, all measured in this one run.

    python -m bench.pretrain                      # batch 8 at 224, ~2 minutes on a 2-core CPU
    python -m bench.pretrain --batch-size 4 --seconds 20 --threads 1 --skip-pipeline

Part 1 (the ratio): training images/s of one SGD step (forward, loss, backward, update) on a fixed
synthetic batch generated on the device. Anchor: torchvision's resnet50 in a plain PyTorch loop (NCHW,
fp32); the same loop in channels_last, and in bf16 autocast, shows what each trick gives torchvision.
Ours: our ResNet-50 through training.loop.train_step (channels_last; fp32, then bf16 autocast;
`--compile` adds torch.compile). Variants run round-robin, one step each in turn, so a busy neighbour
slows them alike; medians; on CUDA every step is synchronised before its clock stops.
Goal: ours in bf16 >= 2x torchvision's fastest fp32 plain loop on the same device ("vs best tv fp32").

Part 2 (which bounds which): images/s of the data pipeline alone (DataLoader + decode +
augmentation, no model) against the training step, for the CIFAR recipe (ResNet-20, 32x32 JPEGs
from ../shared/data/cifar10-jpeg.tar.gz) and the ImageNet recipe (ResNet-50, full-size JPEGs of
../shared/data/imagenet-sample100), with the PIL and torchvision decoders.
"""

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from backbone import create_model
from backbone.torchvision_compat import from_torchvision
from backbone.weights import load_checked
from bench.timing import autocast, ratio_table, time_round_robin
from training.classification_data import build_dataset, extract_once, find_split_root
from training.distributed import DistributedContext
from training.loop import make_loader, prepare_model, train_step
from training.precision import Precision
from training.sampler import ResumableBatchSampler, SeededDataset
from training.transforms import cifar_train_transform, imagenet_train_transform

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REFERENCE = "torchvision"  # the prefix of the anchor model's rows
CLASSIFICATION_GOAL = 2.0  # ours in bf16 against torchvision's fastest fp32 plain loop, same device


def plain_step(model, optimizer, images, labels) -> None:
    """What a from-scratch PyTorch loop does (torchvision's reference train.py without its extras)."""
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def training_variants(
    *,
    batch_size: int,
    image_size: int,
    device: torch.device,
    bf16: bool = True,
    compile_model: bool = False,
    arch: str = "resnet50",
) -> dict[str, Callable[[], None]]:
    """name -> zero-argument callable running one training step on its own model and batch (`arch`: any
    ResNet both torchvision and we build; resnet18 makes a smoke run quick).

    The first entry is the anchor (torchvision NCHW fp32); every fp32 torchvision row is a candidate for
    "torchvision's best fp32" (`best_reference`). The batch is generated on `device`, so no input pipeline
    is timed.
    """
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, 1000, (batch_size,), device=device)
    channels_last_images = images.contiguous(memory_format=torch.channels_last)
    variants = {}

    def plain(model, batch, autocast_dtype=None):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def step():
            with autocast(device, autocast_dtype):
                plain_step(model, optimizer, batch, labels)

        return step

    reference = getattr(torchvision.models, arch)(weights=None).to(device)
    reference_state = copy.deepcopy(reference.state_dict())
    name = f"{REFERENCE} {arch}, plain loop"
    variants[f"{name}, fp32 (anchor)"] = plain(reference, images)
    # The same plain loop in channels_last: separates what the memory format gives from what our loop does.
    reference_cl = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    variants[f"{name}, fp32 channels_last"] = plain(reference_cl, channels_last_images)

    def compute_loss(net, batch):
        x, y = batch
        return F.cross_entropy(net(x), y), {}

    def ours(model, *, amp: str, compile_model: bool = False):
        precision = Precision(amp=amp, device=device)
        wrapped = prepare_model(model, ctx=ctx, channels_last=True, compile_model=compile_model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        return lambda: train_step(model=wrapped, batch=(channels_last_images, labels), compute_loss=compute_loss,
                                  optimizer=optimizer, precision=precision)  # fmt: skip

    def same_weights():  # torchvision's layout and weights
        model = create_model(arch, stride_in_1x1=False)
        load_checked(model, from_torchvision(copy.deepcopy(reference_state)), source="torchvision")
        return model

    variants["ours, torchvision layout, our loop, fp32 channels_last"] = ours(same_weights(), amp="none")
    if bf16:
        # What bf16 gives torchvision's model in the same plain loop: the tricks are shared, the ratio is honest.
        reference_bf16 = copy.deepcopy(reference_cl)
        variants[f"{name}, bf16 autocast channels_last"] = plain(reference_bf16, channels_last_images,
                                                                  torch.bfloat16)  # fmt: skip
        variants["ours, torchvision layout, our loop, bf16 channels_last"] = ours(same_weights(), amp="bf16")
        variants["ours, paper layout (stride in 1x1), our loop, bf16 channels_last"] = ours(
            create_model(arch), amp="bf16"
        )
    if compile_model:
        variants["ours, torchvision layout, our loop, bf16 channels_last, compiled"] = ours(
            same_weights(), amp="bf16" if bf16 else "none", compile_model=True
        )
    return variants


def pipeline_images_per_s(dataset, transform, *, batch_size: int, workers: int, seconds: float) -> float:
    """Images/s of DataLoader + decode + augmentation alone (the model is not run)."""
    sampler = ResumableBatchSampler(dataset_size=len(dataset), global_batch_size=batch_size, seed=0)
    loader = make_loader(SeededDataset(dataset, transform), batch_sampler=sampler, workers=workers,
                         device=torch.device("cpu"))  # fmt: skip
    count, iterator = 0, iter(loader)
    next(iterator)  # worker start-up is paid once per run, not per image
    start = time.perf_counter()
    for epoch in range(1, 1000):
        for images, _ in iterator:
            count += len(images)
            if time.perf_counter() - start > seconds:
                return count / (time.perf_counter() - start)
        sampler.set_epoch(epoch)
        iterator = iter(loader)
    return count / (time.perf_counter() - start)


def step_images_per_s(model_name: str, *, batch_size: int, image_size: int, num_classes: int, seconds: float) -> float:
    device = torch.device("cpu")
    model = create_model(model_name, num_classes=num_classes)
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    step = prepare_model(model, ctx=ctx, channels_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size,))
    times = time_round_robin({"step": lambda: plain_step(step, optimizer, images, labels)}, seconds=seconds)
    return batch_size / statistics.median(times["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="part 1: images per training step")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=30, help="time budget of each measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="part 2: DataLoader workers to try")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--no-bf16", action="store_true", help="part 1 without the bf16 autocast rows")
    parser.add_argument("--compile", action="store_true", help="part 1 with a torch.compile row (slow to compile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip

    print(f"\n[1] training step, ResNet-50, batch {args.batch_size} at {args.image_size}x{args.image_size}")
    variants = training_variants(batch_size=args.batch_size, image_size=args.image_size, device=device,
                                 bf16=not args.no_bf16, compile_model=args.compile)  # fmt: skip
    times = time_round_robin(variants, seconds=args.seconds, device=device)
    ratio_table(times, batch_size=args.batch_size, reference=REFERENCE, goal=CLASSIFICATION_GOAL)

    if args.skip_pipeline:
        return
    print("\n[2] input pipeline alone vs training step (CPU)")
    recipes = []
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if archive.is_file():
        root = find_split_root(extract_once(archive, REPO_ROOT / "data_cache"), "train")
        recipes.append(("CIFAR-10 recipe, 32x32 JPEGs", root, "train", cifar_train_transform(),
                        ("cifar_resnet20", 128, 32, 10)))  # fmt: skip
    else:
        print(f"  skipped CIFAR-10: {archive.relative_to(REPO_ROOT.parent)} not found")
    imagenet = SHARED_DATA / "imagenet-sample100"
    if (imagenet / "val").is_dir():
        recipes.append(("ImageNet recipe, full-size JPEGs", imagenet, "val", imagenet_train_transform(),
                        ("resnet50", args.batch_size, 224, 100)))  # fmt: skip
    else:
        print("  skipped ImageNet: imagenet-sample100 not found")
    for title, root, split, transform, (model_name, batch, size, classes) in recipes:
        step_rate = step_images_per_s(model_name, batch_size=batch, image_size=size, num_classes=classes,
                                      seconds=args.seconds)  # fmt: skip
        print(f"  {title}: training step of {model_name} (batch {batch}): {step_rate:.1f} img/s")
        for decoder in ("pil", "torchvision"):
            dataset = build_dataset(kind="folder", root=root, split=split, decoder=decoder)
            for workers in args.workers:
                rate = pipeline_images_per_s(dataset, transform, batch_size=min(batch, len(dataset)), workers=workers,
                                             seconds=args.seconds / 2)  # fmt: skip
                bound = "input" if rate < step_rate else "model"
                print(f"    pipeline {decoder:<11} {workers} worker(s): {rate:8.1f} img/s = "
                      f"{rate / step_rate:5.1f}x the step -> {bound}-bound")  # fmt: skip


if __name__ == "__main__":
    main()
