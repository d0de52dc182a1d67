"""Post-training int8 of a detector or classifier checkpoint, written only if it keeps its accuracy.

    python -m detection.data.synthetic --out runs/shapes_check --num-train 100 --num-val 200 --image-size 128 --seed 1
    python -m detection.quantize service/models/demo_detector.safetensors --runtime openvino \\
        --calibration runs/shapes_check/coco/train --eval-coco runs/shapes_check/coco/annotations/instances_val.json \\
        --eval-images runs/shapes_check/coco/val --output demo_detector.int8.xml
    python -m detection.quantize service/models/demo_classifier.safetensors --runtime onnxruntime \\
        --calibration cifar10/train --eval-folder ../shared/data/cifar10-jpeg.tar.gz --output demo_classifier.int8.onnx

Calibration: NNCF's post-training quantization for OpenVINO (an .xml + .bin; a detector's box decoding, NMS,
top-k and RoIAlign stay float), ONNX Runtime's static QDQ quantization of convolutions and matrix products (an
.onnx), on the images named by --calibration. The fp32 and int8 models are then scored on the held-out set
(COCO AP for a detector, top-1 for a classifier), both figures go into the written model's manifest
("quantization"), and a model whose score drops by more than --max-drop points is not written unless --force.
Serve the file it writes at int8.
"""

import argparse
from pathlib import Path

from backbone.command_logging import add_logging_flags, setup_logging
from backbone.flags import FlagParser

FORMATS = {"openvino": ".xml", "onnxruntime": ".onnx"}
DEFAULT_MAX_DROP = 1.0  # points of AP or top-1


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="python -m detection.quantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="A resdet .safetensors checkpoint (detector or classifier).")
    parser.add_argument(
        "--runtime", choices=sorted(FORMATS), default="openvino", help="Who runs it (default: openvino)."
    )
    parser.add_argument("--calibration", nargs="+", required=True, help="Calibration images: files or folders.")
    parser.add_argument("--calibration-size", type=int, default=300, help="At most this many, evenly spaced (300).")
    parser.add_argument("--eval-coco", type=Path, help="Detector: the held-out set's COCO annotations (.json).")
    parser.add_argument("--eval-images", type=Path, help="Detector: the folder of those images.")
    parser.add_argument("--eval-folder", type=Path, help="Classifier: class folders, or a .tar.gz of them.")
    parser.add_argument("--eval-split", default="test", help="Classifier: the split folder (default: test).")
    parser.add_argument("--eval-limit", type=int, help="Classifier: score N held-out images, evenly spaced.")
    parser.add_argument("--output", "-o", type=Path, required=True, help="The int8 model: .xml (openvino), .onnx.")
    parser.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, help="Points allowed (default: 1.0).")
    parser.add_argument("--force", action="store_true", help="Write the model even if it dropped more.")
    parser.add_argument("--threads", type=int, help="Threads for calibration and scoring (default: torch's).")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    if args.output.suffix != FORMATS[args.runtime]:
        parser.error(f"--runtime {args.runtime} writes a {FORMATS[args.runtime]} file, not {args.output.name}")
    if (args.eval_coco is None) != (args.eval_images is None):
        parser.error("give --eval-coco and --eval-images together")
    if (args.eval_coco is None) == (args.eval_folder is None):
        parser.error("give a held-out set: --eval-coco with --eval-images (detector) or --eval-folder (classifier)")
    if args.calibration_size < 1 or args.max_drop < 0:
        parser.error("--calibration-size must be at least 1 and --max-drop at least 0")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # torch, onnx and the runtimes only once the command runs, so that --help answers at once
    from backbone.weights import CheckpointError
    from detection.int8_calibration import quantize
    from detection.runtimes import RuntimeChoiceError

    try:
        written, report = quantize(args)
    except (CheckpointError, RuntimeChoiceError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    figures = f"{report['metric']} fp32 {report['fp32']:.2f}, int8 {report['int8']:.2f} (drop {report['drop']:.2f})"
    if written is None:
        raise SystemExit(f"refused: {figures} exceeds --max-drop {args.max_drop}; nothing written (--force writes it)")
    print(f"wrote {written}: {figures}{', over --max-drop: written because of --force' if report['forced'] else ''}")


if __name__ == "__main__":
    main()
