"""Detection training throughput: our Faster R-CNN loop vs a plain loop over torchvision's, same run.

    python -m bench.train_det                       # ResNet-50 FPN, batch 2, shorter side 800
    python -m bench.train_det --min-size 320 --steps 4   # quicker on a small CPU

Both models are ResNet-50 FPN Faster R-CNN with frozen BN and stem+res2 frozen (torchvision's
fasterrcnn_resnet50_fpn as built with pretrained weights), holding the same weights (ours converted
from torchvision's state dict). Same images and targets (coco-mini train when ../shared is there,
else generated shapes), same batch and input size, SGD. Steps alternate between the two so a busy
machine slows both alike; the median step time is reported and the ratio printed.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from backbone.weights import load_checked
from detection import build_detector
from detection.data import CocoDetection, build_transforms, collate_fn, generate_synthetic
from detection.torchvision_compat import describe_torchvision_detector, rename_torchvision_detector

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = REPO_ROOT.parent / "shared" / "data" / "coco-mini"


def torchvision_detector(*, min_size: int, max_size: int) -> FasterRCNN:
    """fasterrcnn_resnet50_fpn exactly as torchvision builds it for fine-tuning from ImageNet weights
    (frozen BN, 3 trainable stages), minus the download: its public builder switches to trainable BN
    everywhere when no weights are given."""
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    return FasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=min_size, max_size=max_size)


def batches(*, count: int, batch_size: int) -> list[tuple[list[torch.Tensor], list[dict]]]:
    transform = build_transforms(flip_prob=0.0)
    if (COCO_MINI / "annotations" / "instances_train2017.json").is_file():
        dataset = CocoDetection(COCO_MINI / "annotations" / "instances_train2017.json", COCO_MINI / "train2017",
                                transforms=transform, keep_empty=False)  # fmt: skip
        source = "coco-mini train2017"
    else:
        root = Path(tempfile.mkdtemp())
        generate_synthetic(root, num_train=count * batch_size, num_val=1, image_size=256, seed=0)
        annotations = root / "coco" / "annotations" / "instances_train.json"
        dataset = CocoDetection(annotations, root / "coco" / "train", transforms=transform)
        source = "generated shapes (../shared/data/coco-mini not found)"
    print(f"images: {source}")
    out = []
    for step in range(count):
        images, targets = collate_fn([dataset[step * batch_size + i] for i in range(batch_size)])
        # contiguous labels 1..80 are valid targets for both 91-column heads (this measures speed, not accuracy)
        out.append((images, [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = torchvision_detector(min_size=args.min_size, max_size=args.max_size)
    state = reference.state_dict()
    ours = build_detector(**{**describe_torchvision_detector(state), "min_size": (args.min_size,),
                             "max_size": args.max_size})  # fmt: skip
    load_checked(ours, rename_torchvision_detector(state), source="torchvision fasterrcnn_resnet50_fpn")
    models = {"torchvision fasterrcnn_resnet50_fpn (anchor)": reference, "ours (FPN, same weights)": ours}
    optimizers = {
        name: torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        for name, model in models.items()
    }
    data = batches(count=args.steps + 1, batch_size=args.batch_size)
    times: dict[str, list[float]] = {name: [] for name in models}
    for step, (images, targets) in enumerate(data):
        for name, model in models.items():
            model.train()
            start = time.perf_counter()
            losses = model(images, targets)
            losses = losses[0] if isinstance(losses, tuple) else losses  # ours returns (losses, detections)
            loss = sum(losses.values())
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            if step > 0:  # the first step warms up allocators and oneDNN caches
                times[name].append(time.perf_counter() - start)
    anchor = statistics.median(times["torchvision fasterrcnn_resnet50_fpn (anchor)"])
    print(f"\ntraining, batch {args.batch_size}, shorter side {args.min_size} (max {args.max_size}), fp32, "
          f"{args.steps} steps each, threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'loop':<46} {'s/step':>7} {'img/s':>7} {'vs anchor':>10}")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"{name:<46} {seconds:>7.2f} {args.batch_size / seconds:>7.2f} {anchor / seconds:>9.2f}x")


if __name__ == "__main__":
    main()
