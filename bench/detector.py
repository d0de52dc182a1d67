"""Eval-mode Faster R-CNN R50-FPN on CPU: our detector vs torchvision's, same process, weights and images.

    python -m bench.detector                 # 4 images (demo + coco-mini val), shorter side 800, ~5 min
    python -m bench.detector --quick         # 2 images, 1 round: a smoke run in about a minute
    python -m bench.detector --compile       # adds torch.compile of our feature extractor
    python -m bench.detector --weights fasterrcnn_resnet50_fpn_coco-258fb6c6.pth   # real COCO weights
    python -m bench.detector --keep-freed-memory   # glibc keeps freed memory: fewer page faults, both models

Last, the end-to-end path: `Predictor.predict` from the image file to the records (decode, prepare,
forward, cut, records) against the model call alone on the same images decoded beforehand.

The anchor is torchvision's `fasterrcnn_resnet50_fpn` exactly as it is built for its COCO weights
(FrozenBatchNorm2d backbone), called the usual way (eval, torch.no_grad). Without --weights both
models share randomly initialised weights made to behave like trained ones where it matters (BN
statistics, spread-out class scores, unused COCO ids never scored), so there are detections to
compare. Variants run round-robin (one call of each in turn) so a busy machine slows all alike; we
report medians, and each speedup is the median over calls of anchor time / variant time for the same
images in the same round (paired, so load that drifts between rounds cancels). "same detections"
means every detection matches the anchor's: same class, box within 1e-3 px, score within 1e-4.
"""

import argparse
import copy
import ctypes
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from backbone import convert_to_frozen_batchnorm
from backbone.weights import load_checked, read_state_dict
from detection import COCO_CATEGORY_IDS, Detector, build_detector
from detection.images import to_float_image
from detection.predictor import Predictor
from detection.torchvision_compat import (
    describe_torchvision_detector,
    make_trained_like,
    rename_torchvision_detector,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ANCHOR = "torchvision fasterrcnn_resnet50_fpn (anchor)"
OPTIMIZED = "+ fused convs = optimize_for_inference()"
Run = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


def image_paths(count: int, *, landscape_only: bool = False) -> list[Path]:
    """Demo images then coco-mini val; landscape_only: coco-mini val images wider than tall (a batch that
    pads little, as a server that groups requests by padded shape would form)."""
    coco = sorted((SHARED / "coco-mini" / "val2017").glob("*.jpg"))
    paths = coco if landscape_only else sorted((SHARED / "demo-images").glob("*.jpg")) + coco
    if not paths:
        raise SystemExit(f"no images under {SHARED} (demo-images, coco-mini/val2017): the benchmark needs them")
    chosen = []
    for path in paths:
        with Image.open(path) as image:
            if not landscape_only or image.width > image.height:
                chosen.append(path)
        if len(chosen) == count:
            break
    return chosen


def load_images(count: int, *, landscape_only: bool = False) -> list[torch.Tensor]:
    """`image_paths`' images as float tensors."""
    images = []
    for path in image_paths(count, landscape_only=landscape_only):
        with Image.open(path) as image:
            images.append(to_float_image(image))
    return images


def keep_freed_memory() -> None:
    """Large tensors otherwise get fresh pages from the kernel at every forward (page faults, zeroing)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)):
        raise SystemExit("mallopt failed (not glibc?)")


def torchvision_anchor(weights: Path | None) -> nn.Module:
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    convert_to_frozen_batchnorm(model.backbone.body)  # what the COCO-weight builder uses (norm_layer=Frozen)
    if weights is not None:
        model.load_state_dict(read_state_dict(weights))
        return model.eval()
    return make_trained_like(model)  # trained-like statistics and scores (see the module docstring)


def build_variants(anchor: nn.Module, *, compile_features: bool) -> tuple[dict[str, Run], Detector]:
    state_dict = anchor.state_dict()
    ours = build_detector(**describe_torchvision_detector(state_dict)).eval()
    load_checked(ours, rename_torchvision_detector(state_dict), source="torchvision anchor")

    def ours_run(model: Detector) -> Run:
        def run(images):
            with torch.inference_mode():
                return model(images)[1]

        return run

    def bf16_run(model: Detector) -> Run:
        def run(images):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(images)[1]

        return run

    def anchor_run(images):
        with torch.no_grad():
            return anchor(images)

    def ours_no_grad(images):
        with torch.no_grad():
            return ours(images)[1]

    optimized = copy.deepcopy(ours).optimize_for_inference()
    variants = {
        ANCHOR: anchor_run,
        "ours, as converted (no_grad)": ours_no_grad,
        "+ inference_mode": ours_run(ours),
        "+ channels_last": ours_run(copy.deepcopy(ours).optimize_for_inference(fold_bn=False, fuse=False)),
        "+ BN folded": ours_run(copy.deepcopy(ours).optimize_for_inference(fuse=False)),
        OPTIMIZED: ours_run(optimized),
        "optimize_for_inference() + bf16 autocast": bf16_run(optimized),
    }
    if compile_features:  # inductor, one compilation per padded input shape (paid in the warm-up)
        compiled = copy.deepcopy(ours).optimize_for_inference(fuse=False)
        compiled.features = torch.compile(compiled.features)
        variants["BN folded + channels_last + torch.compile(features)"] = ours_run(compiled)
    return variants, optimized


def same_detections(reference: dict, other: dict, *, our_labels: bool) -> tuple[bool, float, float]:
    """(every detection matched, max box difference, max score difference); labels compared as COCO ids."""
    if len(reference["boxes"]) != len(other["boxes"]):
        return False, float("inf"), float("inf")
    if len(reference["boxes"]) == 0:
        return True, 0.0, 0.0
    labels = torch.tensor(COCO_CATEGORY_IDS)[other["labels"] - 1] if our_labels else other["labels"]
    distance = (reference["boxes"][:, None] - other["boxes"][None]).abs().amax(dim=-1)
    distance[reference["labels"][:, None] != labels[None]] = float("inf")
    closest = distance.min(dim=1)
    box = closest.values.max().item()
    score = (reference["scores"] - other["scores"][closest.indices]).abs().max().item()
    one_to_one = len(set(closest.indices.tolist())) == len(other["boxes"])
    return one_to_one and box < 1e-3 and score < 1e-4, box, score


def time_round_robin(variants: dict[str, Run], batches: list[list[torch.Tensor]], rounds: int) -> dict[str, list]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for batch in batches:
            for name, run in variants.items():
                start = time.perf_counter()
                run(batch)
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="demo images first, then coco-mini val")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over the images per variant")
    parser.add_argument("--batch-size", type=int, default=4, help="images per call for the throughput figure")
    parser.add_argument("--quick", action="store_true", help="2 images, 1 round, batch 2")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant (slow warm-up)")
    parser.add_argument("--weights", type=Path, help="a torchvision fasterrcnn_resnet50_fpn weight file")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc mallopt: no mmap/trim for large blocks (the process-wide allocator setting "
        "that MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ give; applies to both models)",
    )
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    if args.quick:
        args.images, args.rounds, args.batch_size = 2, 1, 2

    images = load_images(args.images)
    anchor = torchvision_anchor(args.weights)
    variants, optimized = build_variants(anchor, compile_features=args.compile)
    sizes = ", ".join(f"{image.shape[2]}x{image.shape[1]}" for image in images)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"{len(images)} images ({sizes}), shorter side 800")  # fmt: skip

    reference = [anchor_detection for image in images for anchor_detection in variants[ANCHOR]([image])]
    agreement = {}
    for name, run in variants.items():  # also the warm-up: oneDNN primitive caches, allocator, compilation
        ours = name != ANCHOR
        results = [same_detections(ref, run([image])[0], our_labels=ours) for ref, image in zip(reference, images)]
        agreement[name] = (all(r[0] for r in results), max(r[1] for r in results), max(r[2] for r in results))
    detections = sum(len(r["boxes"]) for r in reference)

    latency = time_round_robin(variants, [[image] for image in images], args.rounds)
    batch = load_images(args.batch_size, landscape_only=True)
    for run in variants.values():  # warm-up at the batch's padded shape (torch.compile compiles it here)
        run(batch)
    throughput = time_round_robin(variants, [batch], args.rounds)

    # End to end: the Predictor from the file to the records (decode, prepare, forward, cut, records), against
    # the model call alone on the same images decoded beforehand, the same optimized model, paired.
    paths = image_paths(args.images)
    predictor = Predictor(optimized, device="cpu", precision="fp32")
    end_to_end = {
        "model call alone (decoded float tensors)": lambda _: [variants[OPTIMIZED]([image]) for image in images],
        "Predictor.predict, decode to records": lambda _: [
            predictor.predict([path], score_threshold=0.05) for path in paths
        ],
    }
    path_times = time_round_robin(end_to_end, [[None]], args.rounds + 1)

    def paired_speedup(times: dict[str, list[float]], name: str) -> float:
        return statistics.median(a / b for a, b in zip(times[ANCHOR], times[name]))

    print(f"\n{detections} anchor detections over {len(images)} images; latency = median s/image at batch 1; "
          f"throughput = images/s at batch {len(batch)} (landscape coco-mini val images: "
          f"{', '.join(f'{image.shape[2]}x{image.shape[1]}' for image in batch)})")  # fmt: skip
    print(f"{'variant':<52} {'s/image':>8} {'speedup':>8} {'img/s':>7} {'speedup':>8}  same detections (max diff)")
    for name in variants:
        seconds = statistics.median(latency[name])
        rate = len(batch) / statistics.median(throughput[name])
        same, box, score = agreement[name]
        verdict = f"{'yes' if same else 'NO '} ({box:.1e} px, {score:.1e})"
        print(f"{name:<52} {seconds:>8.3f} {paired_speedup(latency, name):>7.2f}x {rate:>7.3f} "
              f"{paired_speedup(throughput, name):>7.2f}x  {verdict}")  # fmt: skip
    print(f"\nend to end over the {len(paths)} image files, batch 1, fp32 (median s/image):")
    alone, whole = (statistics.median(times) / len(paths) for times in path_times.values())
    for name, seconds in zip(end_to_end, (alone, whole)):
        print(f"{name:<52} {seconds:>8.3f}")
    print(f"decode + prepare + cut + records add {100 * (whole / alone - 1):.1f}% to the model call")


if __name__ == "__main__":
    main()
