"""What bf16 autocast costs in accuracy and buys in speed, on a trained detector and its held-out set.

    python -m bench.detector_bf16 --checkpoint service/models/demo_detector.safetensors \
        --annotations runs/shapes128/coco/annotations/instances_val.json --images runs/shapes128/coco/val

The same optimized model (BN folded, channels_last) is evaluated in fp32 (the anchor) and under bf16
autocast, on the same images, in the same run; pycocotools mAP and the wall time of each pass are
printed with their differences. bf16 goes on by default only where AP moves by at most 0.3 points
(issue 11; bench/bf16_accuracy.py runs this on a model trained on real images).
"""

import argparse
import time

import torch

from detection import load_detector
from detection.data import CocoDetection
from detection.evaluation import evaluate_coco

AP_BUDGET_POINTS = 0.3  # bf16 by default only if AP moves by at most this (on the real-image model)


def evaluate(model, dataset: CocoDetection, *, batch_size: int) -> tuple[dict[str, float], float]:
    predictions = {}
    start = time.perf_counter()
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        detections = model.predict([image for image, _ in items], score_threshold=0.0, max_detections=100)
        for (_, target), detection in zip(items, detections):
            predictions[target["image_id"]] = {k: detection[k].float() for k in ("boxes", "scores", "labels")}
    seconds = time.perf_counter() - start
    return evaluate_coco(dataset, predictions, verbose=False).stats, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--annotations", required=True, help="COCO-format instances json of the held-out set")
    parser.add_argument("--images", required=True, help="folder of its images")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    dataset = CocoDetection(args.annotations, args.images)
    results = {}
    for name, bf16 in (("fp32 (anchor)", False), ("bf16 autocast", True)):
        model, _ = load_detector(args.checkpoint)
        model.optimize_for_inference(bf16=bf16)
        evaluate(model, dataset, batch_size=args.batch_size)  # warm-up pass: oneDNN caches
        results[name] = evaluate(model, dataset, batch_size=args.batch_size)
    (anchor_stats, anchor_seconds), (stats, _) = results["fp32 (anchor)"], results["bf16 autocast"]
    print(f"{len(dataset)} images, batch {args.batch_size}, threads {torch.get_num_threads()}")
    print(f"{'variant':<16} {'AP':>7} {'AP50':>7} {'seconds':>8} {'speed vs fp32':>14}")
    for name, (values, wall) in results.items():
        print(f"{name:<16} {values['AP']:>7.4f} {values['AP50']:>7.4f} {wall:>8.2f} {anchor_seconds / wall:>13.2f}x")
    change = 100 * (stats["AP"] - anchor_stats["AP"])
    print(f"bf16 changes AP by {change:+.2f} points and AP50 by {100 * (stats['AP50'] - anchor_stats['AP50']):+.2f}; "
          f"{'within' if abs(change) <= AP_BUDGET_POINTS else 'over'} the {AP_BUDGET_POINTS}-point budget")  # fmt: skip


if __name__ == "__main__":
    main()
