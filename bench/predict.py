"""Throughput of `python -m detection.predict` against `Predictor.predict` on images decoded beforehand.

    python -m bench.predict                       # demo detector, 48 generated 320 px JPEGs, 3 rounds
    python -m bench.predict --images 96 --rounds 5 --image-size 480
    python -m bench.predict --model r50 --device cuda --images 256 --image-size 640 --batch-size 8 --workers 8
    python -m bench.predict --smoke               # seconds on a CPU: what the test suite runs

The anchor is the model alone: every image decoded to a uint8 tensor before the clock starts, then
one `Predictor.predict` call over all of them (batches of --batch-size). The command's pipeline is
timed from the file list to the last JSONL line written (decoding in --workers threads, batching by
padded shape, records, the output file); its model is loaded and optimized outside the clock, as
the anchor's is. Both run on the same optimized model, alternating, in the same run; the best
round of each is compared. Goal: the pipeline within 10% of the anchor (ratio >= 0.90).
"""

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detection import build_detector, save_detector
from detection.data import generate_synthetic
from detection.predict import build_parser, expand_sources, load_model, predict_files

DEMO = Path(__file__).resolve().parents[1] / "service" / "models" / "demo_detector.safetensors"


def decode_all(files: list[str]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(Image.open(file).convert("RGB")).copy()).permute(2, 0, 1) for file in files]


def r50_checkpoint(path: Path) -> str:
    """A randomly initialised ResNet-50 FPN at torchvision's COCO size (800/1333): real compute, no download."""
    torch.manual_seed(0)
    model = build_detector(backbone="resnet50", head="fpn", num_classes=80, stride_in_1x1=False,
                           class_names=[f"class_{i}" for i in range(1, 81)])  # fmt: skip
    return str(save_detector(path, model=model))


def main(argv: Sequence[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("demo", "r50"), default="demo", help="demo: the shipped demo detector")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="8 images of 96 px, 1 round: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.image_size, args.rounds = 8, 96, 1

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as folder:
        root = Path(folder)
        checkpoint = str(DEMO) if args.model == "demo" else r50_checkpoint(root / "r50.safetensors")
        generate_synthetic(root / "data", num_train=args.images, num_val=0, image_size=args.image_size, seed=0)
        files = expand_sources([str(root / "data" / "coco" / "train")])

        def command_args(output: Path) -> argparse.Namespace:
            return build_parser().parse_args(
                [*files, "--checkpoint", checkpoint, "--output", str(output), "--score-threshold", "0.5",
                 "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device]
            )  # fmt: skip

        predictor, manifest = load_model(command_args(root / "unused"))
        device = predictor.device
        decoded = decode_all(files)

        def anchor() -> float:
            start = time.perf_counter()
            predictor.predict(decoded, score_threshold=0.5, batch_size=args.batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        def pipeline(round_index: int) -> float:
            output = root / f"out{round_index}"  # a fresh output: nothing to skip
            start = time.perf_counter()
            predict_files(predictor, manifest, files, args=command_args(output))
            return time.perf_counter() - start

        anchor()  # warm-up: oneDNN kernels and caches
        pipeline(-1)
        anchor_times, pipeline_times = [], []
        for round_index in range(args.rounds):
            anchor_times.append(anchor())
            pipeline_times.append(pipeline(round_index))

    best_anchor, best_pipeline = min(anchor_times), min(pipeline_times)
    print(f"{len(files)} images {args.image_size}x{args.image_size} JPEG, batch {args.batch_size}, "
          f"workers {args.workers}, device {device}, torch threads {torch.get_num_threads()}, "
          f"rounds {args.rounds}")  # fmt: skip
    print(f"{'variant':<44} {'img/s (best)':>12} {'img/s (each round)':>30}")
    for name, times in (("Predictor.predict on decoded tensors (anchor)", anchor_times),
                        ("python -m detection.predict pipeline", pipeline_times)):  # fmt: skip
        rounds = " ".join(f"{len(files) / t:.1f}" for t in times)
        print(f"{name:<44} {len(files) / min(times):>12.1f} {rounds:>30}")
    ratio = best_anchor / best_pipeline
    print(f"pipeline / anchor throughput: {ratio:.3f} ({'within' if ratio >= 0.9 else 'outside'} the 10% goal)")
    return ratio


if __name__ == "__main__":
    main()
