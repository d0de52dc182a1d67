"""CIFAR-10 input pipelines alone (no model), in one run: today's JPEG DataLoader path against the
on-device path of training.device_data, both giving normalised, cropped and flipped batches of 128.

    python -m bench.cifar_input                       # ../shared/data/cifar10-jpeg.tar.gz, CPU
    python -m bench.cifar_input --data data_cache/cifar10_uint8.pt --batches 40 --device cuda

JPEG path: ImageFolder of the extracted tarball, PIL decode, v2 RandomCrop(32, padding=4) + flip +
normalise per sample under its seed (SeededDataset), DataLoader with `--workers` processes.
On-device path: the packed uint8 set (decoded once, not timed: its one-off cost is printed), one
gather per batch. Each path runs `--rounds` times, alternating, so a busy neighbour slows both
alike; medians of images/s, and their ratio.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from training.classification_data import build_dataset, extract_once, find_split_root
from training.device_cifar import (
    DeviceImages,
    DeviceTrainBatches,
    Normalizer,
    cifar_crop_flip_params,
    load_cifar_arrays,
)
from training.loop import make_loader
from training.sampler import ResumableBatchSampler, SeededDataset
from training.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_train_transform

REPO_ROOT = Path(__file__).resolve().parents[1]


def images_per_second(batches, *, count: int, batch_size: int, device: torch.device) -> float:
    iterator = iter(batches)
    next(iterator)  # the first batch pays the workers' start and the epoch's crop parameters
    started = time.perf_counter()
    for _ in range(count):
        images, _ = next(iterator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    del images
    return count * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"),
                        help="the JPEG tarball (both paths start from it)")  # fmt: skip
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device, batch_size = torch.device(args.device), 128
    cache = REPO_ROOT / "data_cache"
    root = find_split_root(extract_once(args.data, cache), "test")
    started = time.perf_counter()
    arrays = load_cifar_arrays(args.data)
    print(f"one-off: decoding the tarball into uint8 arrays took {time.perf_counter() - started:.1f} s")
    split = DeviceImages(arrays.train_images, arrays.train_labels, classes=arrays.classes, padding=4, device=device)
    sampler = ResumableBatchSampler(dataset_size=len(split), global_batch_size=batch_size, seed=0)
    normalizer = Normalizer(mean=CIFAR10_MEAN, std=CIFAR10_STD, device=device)
    on_device = DeviceTrainBatches(split, sampler=sampler, crop_size=32, normalizer=normalizer)
    jpeg = make_loader(SeededDataset(build_dataset(kind="folder", root=root, split="train"), cifar_train_transform()),
                       batch_sampler=sampler, workers=args.workers, device=device)  # fmt: skip
    rates = {"jpeg_dataloader": [], "on_device": []}
    for round_index in range(args.rounds):
        sampler.set_epoch(round_index)
        rates["jpeg_dataloader"].append(images_per_second(jpeg, count=args.batches, batch_size=batch_size,
                                                          device=device))  # fmt: skip
        rates["on_device"].append(images_per_second(on_device, count=args.batches, batch_size=batch_size,
                                                    device=device))  # fmt: skip
    # The on-device path computes a whole epoch's crop parameters when the epoch starts (its first,
    # untimed batch): add that cost back, spread over the epoch's batches.
    seeds = torch.randint(0, 2**62, (sampler.steps_per_epoch * batch_size,), device=device)
    started = time.perf_counter()
    cifar_crop_flip_params(seeds, padding=4)
    epoch_params_s = time.perf_counter() - started
    per_batch_s = epoch_params_s / sampler.steps_per_epoch
    rates["on_device"] = [batch_size / (batch_size / rate + per_batch_s) for rate in rates["on_device"]]
    print(f"on-device crop parameters: {epoch_params_s:.3f} s per epoch, {1000 * per_batch_s:.2f} ms per batch "
          f"(included below)")  # fmt: skip
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"{name:>16}: {value:9.0f} images/s  (rounds: {', '.join(f'{v:.0f}' for v in rates[name])})")
    print(
        f"on-device / JPEG DataLoader ({args.workers} worker): {medians['on_device'] / medians['jpeg_dataloader']:.1f}x"
    )


if __name__ == "__main__":
    main()
