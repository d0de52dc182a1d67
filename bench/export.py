"""ONNX Runtime vs our optimised PyTorch path (Detector.optimize_for_inference()), same checkpoint, same run, CPU.

    python -m bench.export                    # R50-FPN at 800 px: latency (batch 1) and batch-4 throughput
    python -m bench.export --model demo       # the demo detector (ResNet-18 FPN, 128 px)
    python -m bench.export --quick            # 2 images, 1 round, batch 2: a smoke run

The R50-FPN is torchvision's fasterrcnn_resnet50_fpn with random weights made to behave like trained
ones (bench/detector.py's anchor), converted to our checkpoint, then exported with
`detection.onnx_export.export_detector`. Both sides include the resize/normalise/pad step (ONNX Runtime
gets it from `Predictor.prepare` and `batch`, outside the graph). Calls alternate round-robin and each
ratio is the median over calls of PyTorch time / ONNX Runtime time for the same images (paired, so
load that drifts between rounds cancels). ONNX Runtime gets as many intra-op threads as torch.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from bench.detector import load_images, time_round_robin, torchvision_anchor
from detection import build_detector, load_detector, save_detector
from detection.onnx_export import DETECTOR_INPUTS, export_detector
from detection.predictor import Predictor
from detection.torchvision_compat import describe_torchvision_detector, rename_torchvision_detector

DEMO_DETECTOR = Path(__file__).resolve().parents[1] / "service" / "models" / "demo_detector.safetensors"


def r50_fpn_checkpoint(folder: Path, *, anchor: torch.nn.Module | None = None) -> Path:
    """Our checkpoint of the anchor's weights (bench/detector.py's torchvision anchor unless given)."""
    state_dict = (anchor or torchvision_anchor(None)).state_dict()
    model = build_detector(**describe_torchvision_detector(state_dict))
    model.load_state_dict(rename_torchvision_detector(state_dict))
    return save_detector(folder / "r50_fpn.safetensors", model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["r50_fpn", "demo"], default="r50_fpn")
    parser.add_argument("--images", type=int, default=4, help="demo images first, then coco-mini val")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over the images")
    parser.add_argument("--batch-size", type=int, default=4, help="images per call for the throughput figure")
    parser.add_argument("--quick", action="store_true", help="2 images, 1 round, batch 2")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds, args.batch_size = 2, 1, 2

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = DEMO_DETECTOR if args.model == "demo" else r50_fpn_checkpoint(Path(folder))
        start = time.perf_counter()
        onnx_path = export_detector(checkpoint, Path(folder) / "model.onnx").path
        export_seconds = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        model, _ = load_detector(checkpoint)
    inputs_of = Predictor(model, device="cpu", precision="fp32", optimize=False)  # only prepares ONNX's inputs
    model.optimize_for_inference()

    def pytorch(images: list[torch.Tensor]) -> list[int]:
        with torch.inference_mode():
            return [len(detection["boxes"]) for detection in model(images)[1]]

    def onnx_runtime(images: list[torch.Tensor]) -> list[int]:
        inputs = inputs_of.batch([inputs_of.prepare(image) for image in images])
        counts = session.run(["num_detections"], {k: v.numpy() for k, v in zip(DETECTOR_INPUTS, inputs)})[0]
        return counts.tolist()

    runs = {"PyTorch optimize_for_inference()": pytorch, "ONNX Runtime": onnx_runtime}
    images = load_images(args.images)
    batch = load_images(args.batch_size, landscape_only=True)
    same_counts = all(pytorch([image]) == onnx_runtime([image]) for image in images)  # also the warm-up
    for run in runs.values():
        run(batch)
    latency = time_round_robin(runs, [[image] for image in images], args.rounds)
    throughput = time_round_robin(runs, [batch], args.rounds)

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads, "
          f"{args.model}, min_size {model.config['min_size']}, export {export_seconds:.0f} s; "
          f"same detection counts per image: {'yes' if same_counts else 'NO'}")  # fmt: skip
    print(f"latency: median s/image at batch 1 over {len(images)} images; throughput: images/s at batch {len(batch)}")
    print(f"{'backend':<34} {'s/image':>8} {'img/s':>7}")
    for name in runs:
        rate = len(batch) / statistics.median(throughput[name])
        print(f"{name:<34} {statistics.median(latency[name]):>8.3f} {rate:>7.2f}")
    for label, times in (("latency", latency), ("throughput", throughput)):
        ratio = statistics.median(
            a / b for a, b in zip(times["PyTorch optimize_for_inference()"], times["ONNX Runtime"])
        )
        print(f"ONNX Runtime {label} speedup over PyTorch (paired median): {ratio:.2f}x")


if __name__ == "__main__":
    main()
