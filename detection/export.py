"""Export a detector or classifier checkpoint to ONNX, or to a Triton Inference Server model repository.

    python -m detection.export service/models/demo_detector.safetensors --format onnx --output model.onnx
    python -m detection.export service/models/demo_classifier.safetensors --output classifier.onnx
    python -m detection.export coco_r50_fpn.safetensors --triton-repo triton_models --name r50_fpn

Exporter: torch.onnx.export(..., dynamo=True) (torch.export) for every op; none needs the TorchScript
exporter. torchvision's roi_align is translated by onnxscript's torchlib; NMS is our `resdet::grouped_nms`
op (detection/exportable.py), translated here to ONNX NonMaxSuppression. Detector graph inputs and
outputs: see detection/exportable.py and docs/INFERENCE.md ("Export (ONNX, Triton)").
"""

import argparse
import logging
from pathlib import Path

from backbone.command_logging import add_logging_flags, setup_logging
from backbone.flags import FlagParser

log = logging.getLogger("detection.export")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, each in both spellings (`--triton-repo`, `--triton_repo`)."""
    parser = FlagParser(prog="python -m detection.export", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="A resdet .safetensors checkpoint (detector or classifier).")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="The export format (ONNX, opset 18).")
    parser.add_argument("--output", "-o", type=Path, help="The .onnx file to write.")
    parser.add_argument(
        "--triton-repo",
        type=Path,
        help="Write a Triton model repository here instead: NAME for the ONNX Runtime backend, and NAME_openvino "
        "for the OpenVINO backend (the same graph as an IR) where OpenVINO is installed.",
    )
    parser.add_argument("--name", help="The model's name in the Triton repository (default: the checkpoint's stem).")
    parser.add_argument("--max-batch-size", type=int, default=8, help="Triton's max_batch_size (default: 8).")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    if (args.output is None) == (args.triton_repo is None):
        parser.error("give exactly one of --output FILE.onnx and --triton-repo DIR")
    if args.max_batch_size < 1:
        parser.error(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    # torch, onnx and onnxscript only once the command runs, so that --help answers at once
    from backbone.weights import CheckpointError
    from detection.onnx_export import export_checkpoint, quiet_exporter, write_triton_repository

    quiet_exporter()

    try:
        if args.triton_repo is not None:
            written = write_triton_repository(
                args.checkpoint, args.triton_repo, name=args.name, max_batch_size=args.max_batch_size
            )
        else:
            written = export_checkpoint(args.checkpoint, args.output).path
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    log.info("wrote %s", written)


if __name__ == "__main__":
    main()
