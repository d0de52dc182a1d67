"""What flushing subnormal floats (training.precision.flush_denormals) does to CPU training speed.

    python -m bench.denormals                 # ResNet-18 FPN from scratch, coco-mini, 384 px, 12 steps

The same from-scratch detector (same initial weights, same batches, SGD with a 5-step warm-up) is
trained twice in one run: first with PyTorch's default (subnormals kept: the anchor), then with them
flushed to zero. Subnormals appear as training moves weights and gradients towards zero, so the
anchor's steps slow down as it goes; the last third of the steps is compared, and the losses of the
two runs are printed side by side (flushing values below 1.2e-38 should not change them).
"""

import argparse
import copy
import statistics
import time

import torch

from bench.train_det import batches
from detection import build_detector


def train(model, data, *, flush: bool) -> tuple[list[float], list[float]]:
    torch.set_flush_denormal(flush)
    torch.manual_seed(1)  # the RPN and RoI samplers draw from it: the same draws in both runs
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    seconds, losses = [], []
    for step, (images, targets) in enumerate(data):
        for group in optimizer.param_groups:  # linear warm-up from 0.1% over 5 steps, as the 1x schedule
            group["lr"] = 0.005 * min(1.0, 0.001 + step / 5)
        start = time.perf_counter()
        loss = sum(model(images, targets)[0].values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    torch.set_flush_denormal(False)
    return seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=384, help="shorter side (max 640)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="conv weights NHWC, as train_det.py --channels_last true")  # fmt: skip
    args = parser.parse_args()
    if not torch.set_flush_denormal(True):
        raise SystemExit("this CPU has no flush-to-zero mode: nothing to measure")
    torch.set_flush_denormal(False)

    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=80, frozen_bn=False, freeze_at=0,
                           min_size=(args.size,), max_size=640)  # fmt: skip
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data = batches(count=args.steps, batch_size=args.batch_size)
    runs = {
        "subnormals kept (anchor)": train(copy.deepcopy(model), data, flush=False),
        "subnormals flushed": train(copy.deepcopy(model), data, flush=True),
    }
    tail = slice(args.steps - args.steps // 3, None)
    anchor = statistics.median(runs["subnormals kept (anchor)"][0][tail])
    print(f"\nResNet-18 FPN from scratch, batch {args.batch_size}, {args.size} px, {args.steps} steps, "
          f"channels_last {args.channels_last}, threads {torch.get_num_threads()}; "
          f"median of the last {args.steps // 3} steps")  # fmt: skip
    print(f"{'variant':<26} {'first s/step':>12} {'last s/step':>12} {'vs anchor':>10}")
    for name, (seconds, _) in runs.items():
        last = statistics.median(seconds[tail])
        print(f"{name:<26} {seconds[0]:>12.2f} {last:>12.2f} {anchor / last:>9.2f}x")
    print("losses kept:   ", " ".join(f"{v:.4f}" for v in runs["subnormals kept (anchor)"][1]))
    print("losses flushed:", " ".join(f"{v:.4f}" for v in runs["subnormals flushed"][1]))


if __name__ == "__main__":
    main()
