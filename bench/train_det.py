"""Detection training throughput: our Faster R-CNN loop vs a plain loop over torchvision's, same run.

    python -m bench.train_det                                    # ResNet-50 FPN, batch 2, shorter side 800
    python -m bench.train_det --min-size 384 --max-size 640 --steps 3   # quicker on a small CPU
    python -m bench.train_det --device cuda --batch-size 8 --steps 10   # on a GPU

Like for like: both models are ResNet-50 FPN Faster R-CNN as torchvision builds fasterrcnn_resnet50_fpn for
its pretrained weights (FrozenBatchNorm2d, trainable_backbone_layers=3, i.e. stem and res2 frozen) and ours
with the same choice (frozen_bn=True, freeze_at=2), holding the same weights (ours converted from
torchvision's state dict). Same images and targets (coco-mini train when ../shared is there, else
generated shapes), same batch and input size, SGD. Rows: torchvision in fp32 NCHW (the anchor) and
channels_last (its best fp32 settings on a CPU), ours in fp32 channels_last through
training.loop.train_step, then both under bf16 autocast in channels_last. Steps alternate between the
rows so a busy machine slows all alike; the median step time is reported, on CUDA synchronised.
Goal: ours in bf16 >= 1.5x torchvision's fastest fp32 row on the same device ("vs best tv fp32").
"""

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from backbone.weights import load_checked
from bench.timing import autocast, ratio_table, synchronize
from detection import build_detector
from detection.data import CocoDetection, build_transforms, collate_fn, generate_synthetic
from detection.torchvision_compat import describe_torchvision_detector, rename_torchvision_detector
from training.distributed import DistributedContext
from training.loop import prepare_model, train_step
from training.precision import Precision

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = REPO_ROOT.parent / "shared" / "data" / "coco-mini"
REFERENCE = "torchvision"  # the prefix of the anchor model's rows
DETECTION_GOAL = 1.5  # ours in bf16 against torchvision's fastest fp32 plain loop, same device

Batch = tuple[list[torch.Tensor], list[dict]]


def torchvision_detector(*, min_size: int, max_size: int, arch: str = "resnet50") -> FasterRCNN:
    """fasterrcnn_resnet50_fpn exactly as torchvision builds it for fine-tuning from ImageNet weights
    (frozen BN, 3 trainable stages), minus the download: its public builder switches to trainable BN
    everywhere when no weights are given. `arch`: another torchvision ResNet in the same design."""
    body = getattr(torchvision.models, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
    return FasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=min_size, max_size=max_size)


def same_weight_pair(*, min_size: int, max_size: int, arch: str = "resnet50") -> tuple[FasterRCNN, torch.nn.Module]:
    """(torchvision's detector, ours) with identical weights and the same frozen layers."""
    torch.manual_seed(0)
    reference = torchvision_detector(min_size=min_size, max_size=max_size, arch=arch)
    state = reference.state_dict()
    ours = build_detector(**{**describe_torchvision_detector(state), "min_size": (min_size,), "max_size": max_size})
    load_checked(ours, rename_torchvision_detector(state), source="torchvision fasterrcnn_resnet50_fpn")
    return reference, ours


def batches(*, count: int, batch_size: int, data_path: Path = COCO_MINI) -> list[Batch]:
    """`count` batches of coco-mini train2017 (or generated shapes when it is absent), on the CPU."""
    transform = build_transforms(flip_prob=0.0)
    if (data_path / "annotations" / "instances_train2017.json").is_file():
        dataset = CocoDetection(data_path / "annotations" / "instances_train2017.json", data_path / "train2017",
                                transforms=transform, keep_empty=False)  # fmt: skip
        source = "coco-mini train2017"
    else:
        root = Path(tempfile.mkdtemp())
        generate_synthetic(root, num_train=count * batch_size, num_val=1, image_size=256, seed=0)
        annotations = root / "coco" / "annotations" / "instances_train.json"
        dataset = CocoDetection(annotations, root / "coco" / "train", transforms=transform)
        source = "generated shapes (coco-mini not found)"
    print(f"images: {source}")
    out = []
    for step in range(count):
        images, targets = collate_fn([dataset[(step * batch_size + i) % len(dataset)] for i in range(batch_size)])
        # contiguous labels 1..80 are valid targets for both 91-column heads (this measures speed, not accuracy)
        out.append((images, [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]))
    return out


def training_variants(
    *,
    device: torch.device,
    min_size: int,
    max_size: int,
    bf16: bool = True,
    ours_nchw: bool = False,
    arch: str = "resnet50",
) -> dict[str, Callable[[Batch], None]]:
    """name -> callable running one training step of its own model on a (CPU) batch; the first is the anchor.

    Each step copies its batch to the device, as a training loop does. `ours_nchw` adds our loop without
    channels_last (slower on a CPU, measured faster for detection on an H200).
    """
    reference, ours = same_weight_pair(min_size=min_size, max_size=max_size, arch=arch)
    name = f"{REFERENCE} fasterrcnn_{arch}_fpn"
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)

    def plain(model: torch.nn.Module, *, channels_last: bool, autocast_dtype: torch.dtype | None):
        """torchvision's reference loop (references/detection/engine.py) without its logging."""
        model = copy.deepcopy(model).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

        def step(batch: Batch) -> None:
            images = [image.to(device, non_blocking=True) for image in batch[0]]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch[1]]
            with autocast(device, autocast_dtype):
                loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step

    def ours_loop(*, amp: str, channels_last: bool = True):
        """Our model through training.loop.train_step with train_det.py's loss."""
        model = copy.deepcopy(ours)
        wrapped = prepare_model(model, ctx=ctx, channels_last=channels_last)
        wrapped.train()
        precision = Precision(amp=amp, device=device)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

        def compute_loss(net, batch):
            images = [image.to(device, non_blocking=True) for image in batch[0]]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch[1]]
            losses, _ = net(images, targets)
            return sum(losses.values()), losses

        return lambda batch: train_step(model=wrapped, batch=batch, compute_loss=compute_loss, optimizer=optimizer,
                                        precision=precision)  # fmt: skip

    variants = {
        f"{name}, fp32 (anchor)": plain(reference, channels_last=False, autocast_dtype=None),
        f"{name}, fp32 channels_last": plain(reference, channels_last=True, autocast_dtype=None),
        "ours, fp32 channels_last": ours_loop(amp="none"),
    }
    if bf16:
        variants[f"{name}, bf16 autocast channels_last"] = plain(reference, channels_last=True,
                                                                 autocast_dtype=torch.bfloat16)  # fmt: skip
        variants["ours, bf16 autocast channels_last"] = ours_loop(amp="bf16")
    if ours_nchw:
        variants["ours, fp32 NCHW"] = ours_loop(amp="none", channels_last=False)
        if bf16:
            variants["ours, bf16 autocast NCHW"] = ours_loop(amp="bf16", channels_last=False)
    return variants


def time_steps(variants: dict[str, Callable[[Batch], None]], data: list[Batch], *,
               device: torch.device) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per step of each variant, one step of each per batch in turn; the first batch warms up."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index, batch in enumerate(data):
        for name, step in variants.items():
            synchronize(device)
            start = time.perf_counter()
            step(batch)
            synchronize(device)
            if index > 0:  # the first step warms up allocators, oneDNN caches and cuDNN's autotuner
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per row")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-bf16", action="store_true", help="only the fp32 rows")
    args = parser.parse_args()

    device = torch.device(args.device)
    variants = training_variants(device=device, min_size=args.min_size, max_size=args.max_size, bf16=not args.no_bf16)
    times = time_steps(variants, batches(count=args.steps + 1, batch_size=args.batch_size), device=device)
    print(f"\ntraining, batch {args.batch_size}, shorter side {args.min_size} (max {args.max_size}), {args.steps} "
          f"steps each, device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
    ratio_table(times, batch_size=args.batch_size, reference=REFERENCE, goal=DETECTION_GOAL)


if __name__ == "__main__":
    main()
