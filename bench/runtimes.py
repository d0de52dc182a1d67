"""Runtimes side by side on this CPU: each path paired with its anchor in A/B rounds, accuracy beside speed.

    python -m bench.runtimes                      # every table: ResNet-50 224 px (batch 1, 16), demo detector, R50-FPN
    python -m bench.runtimes --rounds 3 --no-compile --eval-images 50
    python -m bench.runtimes --only r50-fpn --runtimes torch onnxruntime openvino --timed-images 1
    python -m bench.runtimes --only classifier --runtimes torch-compile     # the torch.compile rows alone

Classifier: ResNet-50 (torchvision's, random weights: no pretrained file is available offline) and its
resdet copy under every runtime and precision; anchor torchvision fp32 eager. Accuracy: logit cosine to
the anchor's fp32 logits (lowest over the batch) and top-1 agreement with them, on real photographs from
../shared/data/imagenet-sample100 where present. Detector: the shipped demo detector, anchor its eager
`Detector.forward` in fp32; accuracy: COCO AP on freshly generated synthetic shapes and the fraction of
the anchor's detections (score >= 0.5) each path finds. Faster R-CNN R50-FPN (shorter side 800, batch 1):
torchvision's fasterrcnn_resnet50_fpn in fp32 eager is the anchor (random weights made to behave like trained
ones, bench/detector.py), every path runs resdet's converted copy of its weights (torch.compile included,
unless --no-compile); accuracy: the share of resdet's fp32 eager detections (score >= 0.05, best 100) each
path finds on demo and coco-mini images. int8 rows are calibrated here on images that are not scored.
Each path is timed in rounds that alternate with its anchor (anchor, path, anchor, path, ...):
ratio = anchor median / path median, so a busy machine slows both sides of a ratio alike; the load
average is printed before and after, and the CPU model named.
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision

from backbone import create_model
from backbone.preprocessing import ClassifierPreprocessing
from backbone.serving_checkpoint import save_classifier
from backbone.torchvision_compat import from_torchvision
from backbone.weights import load_checked
from bench.detector import image_paths as detector_image_paths
from bench.detector import torchvision_anchor
from bench.export import r50_fpn_checkpoint
from bench.machine import describe
from detection import load_detector
from detection.data.synthetic_shapes import generate_synthetic
from detection.decoding import decode_image
from detection.int8_calibration import calibrate, write_manifest
from detection.network_accuracy import coco_ap, detector_inputs, image_files, matched_fraction
from detection.predictor import UNCAPPED, Cut, Predictor
from detection.runtime_predictor import RuntimePredictor
from detection.runtimes import RUNTIMES, exported_onnx, installed, load_network

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample100"
DEMO_DETECTOR = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
PATHS = [  # (runtime, precision) in table order; int8 runs from a file calibrated here
    ("torch", "fp32"), ("torch", "bf16"), ("torch-compile", "fp32"), ("torch-compile", "bf16"),
    ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
]  # fmt: skip
INT8_SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}
TABLES = ["classifier", "detector", "r50-fpn"]
MIN_SCORE = 0.05  # the R50-FPN's detections compared: torchvision's box_score_thresh (random weights score low)


def machine() -> str:
    """The CPU (bench.machine), with the threads torch runs on."""
    return f"{describe()}, {torch.get_num_threads()} torch threads"


def paired_rounds(anchor: Callable[[], object], path: Callable[[], object], *, rounds: int) -> tuple[float, float]:
    """Median seconds of the anchor and the path, timed alternately after one warm-up call of each."""
    anchor(), path()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for side, step in enumerate((anchor, path)):
            start = time.perf_counter()
            step()
            times[side].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def wanted(runtime: str, *, compile_models: bool, runtimes: list[str] | None) -> bool:
    return (
        installed(runtime)
        and (compile_models or runtime != "torch-compile")
        and (runtimes is None or runtime in runtimes)
    )


def int8_file(source: Path, runtime: str, items: list[tuple[torch.Tensor, ...]], workdir: Path) -> Path:
    """The runtime's int8 model calibrated on `items` (the accuracy guard of detection.quantize is the
    bench's accuracy columns here)."""
    from detection.runtimes import read_graph_manifest

    output = workdir / f"{source.stem}.{runtime}.int8{INT8_SUFFIX[runtime]}"
    onnx_path = exported_onnx(source)
    calibrate(onnx_path, items, runtime=runtime, output=output)
    manifest = read_graph_manifest(onnx_path)
    write_manifest(output, {**manifest, "quantization": {"runtime": runtime, "calibration_images": len(items)}})
    return output


def network_for(source: Path, runtime: str, precision: str, calibration, workdir: Path):
    if precision == "int8":
        return load_network(int8_file(source, runtime, calibration, workdir), runtime=runtime, precision="int8")
    return load_network(source, runtime=runtime, precision=precision)


def classifier_table(args: argparse.Namespace, workdir: Path) -> None:
    torch.manual_seed(0)
    anchor_model = torchvision.models.resnet50(weights=None).eval()
    ours = create_model("resnet50", stride_in_1x1=False).eval()  # torchvision's layout: the same weights
    load_checked(ours, from_torchvision(anchor_model.state_dict()), source="torchvision resnet50")
    checkpoint = save_classifier(
        workdir / "resnet50.safetensors", model=ours, architecture="resnet50",
        class_names=[str(index) for index in range(1000)],
        preprocessing=ClassifierPreprocessing(size=224, resize=256).to_manifest(),
    )  # fmt: skip
    preprocessing = ClassifierPreprocessing(size=224, resize=256)
    if PHOTOS.is_dir():
        files = image_files([PHOTOS], limit=max(args.batch_sizes) * 2)
        crops = torch.stack([preprocessing.prepare(decode_image(path).to_pil()) for path in files])
        source = f"{len(files)} photographs of imagenet-sample100"
    else:
        crops = torch.randn(max(args.batch_sizes) * 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        source = "noise (../shared/data/imagenet-sample100 is absent)"
    calibration, scored = crops[len(crops) // 2 :], crops[: len(crops) // 2]
    with torch.inference_mode():
        reference = anchor_model(scored)
    print(f"\nResNet-50, 224x224, anchor torchvision fp32 eager; accuracy on {source} (half calibrate int8)")
    print(f"| path | {' | '.join(f'batch {b}' for b in args.batch_sizes)} | logit cosine (min) | top-1 agreement |")
    print(f"|---|{'---|' * len(args.batch_sizes)}---|---|")
    for runtime, precision in PATHS:
        if not wanted(runtime, compile_models=args.compile, runtimes=args.runtimes):
            continue
        items = [(crop[None],) for crop in calibration]
        network = network_for(checkpoint, runtime, precision, items, workdir)
        cells = []
        for batch in args.batch_sizes:
            pixels = scored[:batch]
            with torch.inference_mode():
                anchor_s, path_s = paired_rounds(
                    lambda pixels=pixels: anchor_model(pixels),
                    lambda pixels=pixels, network=network: network(pixels),
                    rounds=args.rounds,
                )
            unit = f"{anchor_s * 1000:.0f} ms" if batch == 1 else f"{batch / anchor_s:.1f} img/s"
            cells.append(f"{anchor_s / path_s:.2f}x (anchor {unit})")
        (logits,) = network(scored)
        cosine = torch.nn.functional.cosine_similarity(logits, reference).min().item()
        agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
        print(f"| {runtime} {precision} | {' | '.join(cells)} | {cosine:.4f} | {100 * agreement:.0f}% |", flush=True)


def detector_rows(
    args: argparse.Namespace, workdir: Path, *, checkpoint: Path, anchor: Callable[[torch.Tensor], object],
    timed: list[Path], calibration: list[tuple[torch.Tensor, ...]], compiled: bool,
) -> Iterator[tuple[str, RuntimePredictor, str]]:  # fmt: skip
    """For each wanted path: its name, its predictor (the checkpoint's transform, the path's network) and the
    ratio cell: anchor time / path time at batch 1 over the `timed` images, paired in rounds."""
    cut = Cut(score_threshold=0.0, max_detections=UNCAPPED)
    for runtime, precision in PATHS:
        if not wanted(runtime, compile_models=args.compile, runtimes=args.runtimes):
            continue
        if runtime == "torch-compile" and not compiled:
            continue
        model, _ = load_detector(checkpoint)
        predictor = RuntimePredictor(model, network_for(checkpoint, runtime, precision, calibration, workdir))
        anchor_times, path_times = [], []
        with torch.inference_mode():
            for path in timed:
                pixels, prepared = float_image(path), predictor.prepare(path)
                anchor_s, path_s = paired_rounds(
                    lambda pixels=pixels: anchor([pixels]),
                    lambda prepared=prepared, predictor=predictor: predictor.detect([prepared], [cut]),
                    rounds=args.rounds,
                )
                anchor_times.append(anchor_s)
                path_times.append(path_s)
        ratio = sum(anchor_times) / sum(path_times)
        unit = (
            f"{np.mean(anchor_times):.2f} s" if np.mean(anchor_times) >= 1 else f"{1000 * np.mean(anchor_times):.0f} ms"
        )
        yield f"{runtime} {precision}", predictor, f"{ratio:.2f}x (anchor {unit})"


def detector_table(args: argparse.Namespace, workdir: Path) -> None:
    layout = generate_synthetic(workdir / "shapes", num_train=20, num_val=args.eval_images, image_size=128, seed=11)
    anchor_model, _ = load_detector(DEMO_DETECTOR)
    reference_model, _ = load_detector(DEMO_DETECTOR)
    reference = Predictor(reference_model, device="cpu", precision="fp32", optimize=False)
    calibration = [detector_inputs(reference, path) for path in image_files([layout.coco_image_dir("train")])]
    timed = image_files([layout.coco_image_dir("val")], limit=4)
    annotations, images = layout.coco_annotation_file("val"), layout.coco_image_dir("val")
    expected = coco_ap(reference, annotations, images)
    print(
        f"\nDemo detector (synthetic shapes, 128 px), batch 1, anchor `Detector.forward` fp32 (unoptimised); "
        f"accuracy on {args.eval_images} generated images: eager fp32 AP {expected.ap:.1f}"
    )
    print("| path | ratio | AP | fp32 detections found |\n|---|---|---|---|")
    # torch.compile of the demo graph recompiles per input shape: not a serving path here
    rows = detector_rows(args, workdir, checkpoint=DEMO_DETECTOR, anchor=anchor_model, timed=timed,
                         calibration=calibration, compiled=False)  # fmt: skip
    for name, predictor, ratio in rows:
        score = coco_ap(predictor, annotations, images)
        found = matched_fraction(expected.predictions, score.predictions)
        print(f"| {name} | {ratio} | {score.ap:.1f} | {100 * found:.1f}% |", flush=True)


def detections(predictor: Predictor, paths: list[Path]) -> dict[int, dict[str, np.ndarray]]:
    """The predictor's detections on each image under torchvision's default cut (score >= 0.05, the best 100),
    by index, as matched_fraction takes them."""
    cut = Cut(score_threshold=MIN_SCORE, max_detections=100)
    found = {}
    for index, path in enumerate(paths):
        (result,) = predictor.detect([predictor.prepare(path)], [cut])
        found[index] = {key: value.numpy() for key, value in result.items()}
    return found


def r50_fpn_table(args: argparse.Namespace, workdir: Path) -> None:
    """Faster R-CNN R50-FPN at shorter side 800, batch 1: torchvision's fp32 eager anchor against every path
    that runs resdet's converted copy of its weights; accuracy against resdet's fp32 eager detections."""
    anchor = torchvision_anchor(None)  # random weights made to behave like trained ones (bench/detector.py)
    checkpoint = r50_fpn_checkpoint(workdir, anchor=anchor)
    reference_model, _ = load_detector(checkpoint)
    reference = Predictor(reference_model, device="cpu", precision="fp32", optimize=False)
    scored = detector_image_paths(args.detector_images + args.calibration_images)
    timed = scored[: args.timed_images]
    calibration = [detector_inputs(reference, path) for path in scored[args.detector_images :]]
    scored = scored[: args.detector_images]
    expected = detections(reference, scored)
    count = sum(int((found["scores"] >= MIN_SCORE).sum()) for found in expected.values())
    print(
        f"\nFaster R-CNN R50-FPN, shorter side 800, batch 1, anchor torchvision fasterrcnn_resnet50_fpn fp32 eager "
        f"(no_grad); timed on {', '.join(path.name for path in timed)}; accuracy: of resdet's fp32 eager detections "
        f"(torchvision's cut: score >= {MIN_SCORE}, the best 100; {count} on those images; random weights: no COCO "
        f"weights offline), the share each path finds (same class, IoU >= 0.5); int8 calibrated on "
        f"{len(calibration)} other coco-mini images"
    )
    print("| path | ratio | fp32 detections found |\n|---|---|---|")
    rows = detector_rows(args, workdir, checkpoint=checkpoint, anchor=anchor, timed=timed, calibration=calibration,
                         compiled=True)  # fmt: skip
    for name, predictor, ratio in rows:
        found = matched_fraction(expected, detections(predictor, scored), min_score=MIN_SCORE)
        print(f"| {name} | {ratio} | {100 * found:.1f}% |", flush=True)


def float_image(path: Path) -> torch.Tensor:
    return torch.from_numpy(decode_image(path).pixels).permute(2, 0, 1).float() / 255.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of each side of each pair (default 5)")
    parser.add_argument("--eval-images", type=int, default=100, help="detector accuracy images (default 100)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out torch.compile")
    parser.add_argument("--only", nargs="+", choices=TABLES, default=TABLES, help="the tables to run (default all)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, help="only these runtimes' rows (default all)")
    parser.add_argument("--detector-images", type=int, default=4, help="R50-FPN images scored (default 4)")
    parser.add_argument("--timed-images", type=int, default=2, help="the first R50-FPN images, timed (default 2)")
    parser.add_argument("--calibration-images", type=int, default=4, help="R50-FPN int8 calibration images")
    args = parser.parse_args(argv)
    print(f"bench.runtimes, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {machine()}")
    with tempfile.TemporaryDirectory(prefix="resdet-bench-") as scratch:
        os.environ.setdefault("RESDET_CACHE", scratch)  # exports of the random-weight model are not kept
        for table in args.only:
            {"classifier": classifier_table, "detector": detector_table, "r50-fpn": r50_fpn_table}[table](
                args, Path(scratch)
            )
    print(f"\nafter: {machine()}")


if __name__ == "__main__":
    main()
