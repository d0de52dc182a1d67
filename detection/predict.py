"""Run a detector over images, folders, globs, path lists and videos: one JSON line per image or frame.

    python -m detection.predict photos/ --checkpoint runs/mine/model.safetensors --output runs/predict
    python -m detection.predict 'shots/*.jpg' clip.mp4 --checkpoint fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \\
        --output runs/predict --save-annotated
    python -m detection.predict coco/val2017 --checkpoint coco.safetensors --output runs/val \\
        --coco-results runs/val/detections.json --coco-annotations coco/annotations/instances_val2017.json

SOURCE is an image, a folder (searched recursively for images and videos), a glob, a .txt file listing
one path per line (relative to the list's folder), or a video (needs the `video` extra: PyAV).
OUTPUT/predictions.jsonl gets one object per image or video frame: file, frame (videos), width,
height, detections (box [x1, y1, x2, y2] in pixels of the image as displayed, score, label, name),
the fields of the service's /detect; a file that cannot be read gets {file, error} and the run goes on.
Running the same command again continues where it stopped: what is in the file is not redone.
"""

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backbone.command_logging import add_logging_flags, setup_logging
from backbone.flags import FlagParser
from detection.data.batching import DEFAULT_WORKERS
from detection.test_time_options import add_test_time_flags, options_from_args

# torch and the model's code are imported when the command runs, so that `--help` answers at once
log = logging.getLogger("detection.predict")


def load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The checkpoint in a Predictor on its device, optimized for inference (the fp32 detections stay the same)."""
    from backbone.devices import resolve_device
    from detection.data.voc import read_class_names
    from detection.detector_checkpoint import load_detector
    from detection.prediction_pipeline import PredictError
    from detection.predictor import Predictor

    if args.runtime != "torch" or Path(args.checkpoint).suffix in (".onnx", ".xml"):
        return load_runtime_model(args)
    device = resolve_device(args.device, setting="--device ", error=PredictError)
    class_names = read_class_names(args.class_names) if args.class_names else None
    model, manifest = load_detector(args.checkpoint, class_names=class_names)
    if args.ensemble_checkpoints:
        from detection.ensemble import EnsembleDetector

        members = [load_detector(path, class_names=class_names)[0] for path in args.ensemble_checkpoints]
        model = EnsembleDetector([model, *members])  # ValueError naming what the members do not share
    test_time = options_from_args(args)
    return Predictor(model, device=device, precision=args.precision, test_time=test_time), manifest


def load_runtime_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """A RuntimePredictor: the Predictor with only its network call run by another runtime (detection/runtimes.py).
    A model from detection.quantize runs at int8, the precision its manifest's accuracy check was measured at."""
    import torch

    from detection.prediction_pipeline import PredictError
    from detection.predictor import resolve_precision
    from detection.runtime_predictor import RuntimePredictor
    from detection.runtimes import GRAPH_SUFFIXES, RUNTIMES, RuntimeChoiceError, read_graph_manifest, require_eager

    if args.runtime not in (*RUNTIMES, "auto"):
        raise PredictError(f"--runtime {args.runtime!r}: expected one of {', '.join((*RUNTIMES, 'auto'))}")
    checkpoint = Path(args.checkpoint)
    runtime = "auto" if args.runtime == "torch" else args.runtime  # the torch runtime with an exported graph file
    try:
        for flag in options_from_args(args).changed_flags():  # test-time rungs run the eager model's pieces
            require_eager(runtime, flag)
        if args.ensemble_checkpoints:
            require_eager(runtime, "--ensemble-checkpoints")
    except RuntimeChoiceError as error:
        raise PredictError(f"--runtime {args.runtime}: {error}") from None
    try:
        quantized = checkpoint.suffix in GRAPH_SUFFIXES and "quantization" in read_graph_manifest(checkpoint)
        precision = "int8" if quantized else resolve_precision(args.precision, torch.device("cpu"))
        predictor = RuntimePredictor.from_source(args.checkpoint, runtime=runtime, precision=precision)
    except (RuntimeChoiceError, FileNotFoundError) as error:
        raise PredictError(f"--runtime {args.runtime}: {error}") from error
    return predictor, predictor.network.manifest


def predict(args: argparse.Namespace) -> str:
    """The whole command; returns the closing summary line."""
    if args.engine == "ray":
        from detection.ray_predict import predict_on_ray

        return predict_on_ray(args)
    from detection.prediction_pipeline import PredictError, expand_sources, import_av, is_video, predict_files

    files = expand_sources(args.sources)
    if any(is_video(file) for file in files):
        import_av()
    if args.coco_results and not args.coco_annotations:
        raise PredictError("--coco-results needs --coco-annotations (the COCO json whose image ids to use)")
    predictor, manifest = load_model(args)
    return predict_files(predictor, manifest, files, args=args)


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, each in both spellings (`--class-names` or `--class_names`)."""
    parser = FlagParser(prog="python -m detection.predict", description=__doc__)
    parser.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="An image, folder, glob, .txt list of paths or video."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="Our detector .safetensors or a torchvision Faster R-CNN .pth."
    )
    parser.add_argument(
        "--output", "--output-dir", required=True, help="The folder for predictions.jsonl (and pictures)."
    )
    parser.add_argument(
        "--ensemble-checkpoints", nargs="+", default=[], metavar="CHECKPOINT",
        help="More detector checkpoints run with --checkpoint as one ensemble: its proposals, every model's class "
        "probabilities and box deltas averaged on them, then NMS and box voting (the paper's COCO ensemble).",
    )  # fmt: skip
    parser.add_argument("--class-names", help="For a .pth: a text file with one class name per line, in label order.")
    parser.add_argument(
        "--save-annotated", action="store_true", help="Also write pictures and videos to OUTPUT/annotated/."
    )
    parser.add_argument("--coco-results", help="Also write a COCO results json (needs --coco-annotations).")
    parser.add_argument(
        "--coco-annotations", help="A COCO instances json giving the image ids (by file name) and category ids."
    )
    parser.add_argument(
        "--device", default="auto", help='"auto" (CUDA when present), "cpu", "cuda", "cuda:1" and so on.'
    )
    parser.add_argument(
        "--precision", default="auto", metavar="{auto,fp32,bf16}",
        help="Inference precision: auto (bf16 where the device computes it natively, else fp32; the "
        "service's default), fp32 or bf16 (checked by detection.predictor.resolve_precision).",
    )  # fmt: skip
    parser.add_argument(
        "--runtime", default="torch", metavar="{torch,torch-compile,onnxruntime,openvino,auto}",
        help="What runs the network: torch (eager, default), torch-compile, onnxruntime, openvino, or auto "
        "(openvino where installed, else onnxruntime, else torch). A model from detection.quantize runs at int8.",
    )  # fmt: skip
    parser.add_argument(
        "--bf16", dest="precision", action="store_const", const="bf16", help="The same as --precision bf16."
    )
    parser.add_argument(
        "--score-threshold", type=float, default=0.5, help="Keep detections scoring above this (default: 0.5)."
    )
    parser.add_argument(
        "--max-detections", type=int, default=100, help="At most this many detections per image (default: 100)."
    )
    parser.add_argument("--batch-size", type=int, default=4, help="Images per forward pass (default: 4).")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"Decoding threads (default: {DEFAULT_WORKERS})."
    )
    parser.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="Where the model runs: local (this process, default) or ray (Ray Data actors, each loading the model "
        "once, on the cluster of --address or on one started on this machine; docs/DEPLOYMENT.md).",
    )  # fmt: skip
    # the Ray engine's own flags (--engine ray); on the parser itself, which adds both spellings
    parser.add_argument("--address", help="A running Ray cluster to join (ray://... or host:port); default: a "
                        "cluster of this machine on 127.0.0.1, started for the run.")  # fmt: skip
    parser.add_argument("--actors", type=int, default=1, help="Actors, each with its own model (default: 1).")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (default: 1).")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (default: 0).")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all).")
    parser.add_argument("--parquet", action="store_true", help="Also write predictions.parquet.")
    add_logging_flags(parser)
    add_test_time_flags(parser)  # the test-time ladder (detection/test_time_options.py), off by default
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.workers < 1 or not 0 <= args.score_threshold <= 1 or args.max_detections < 1:
        raise SystemExit("error: --batch-size and --max-detections and --workers must be >= 1, --score-threshold 0..1")
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    from backbone.weights import CheckpointError
    from detection.data.annotations import AnnotationError
    from detection.prediction_pipeline import PredictError

    try:
        print(predict(args))
    except (PredictError, CheckpointError, AnnotationError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
