"""Convert a torchvision Faster R-CNN weight file into our detector checkpoint.

    python -m detection.convert fasterrcnn_resnet50_fpn_coco-258fb6c6.pth coco_r50_fpn.safetensors
    python -m detection.convert fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth coco_r50_fpn_v2.safetensors
    python -m detection.convert my_finetuned.pth mine.safetensors --class-names classes.txt

Handles ResNet-18..152 FPN backbones, the v1 (two fc) and v2 (4 conv + fc, 2-conv RPN, BN in the
FPN) heads. A 91-output file is taken to be COCO: labels 1..80 with COCO's names (see
detection/torchvision_compat.py for the id mapping). Nothing is downloaded.
"""

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from backbone.command_logging import add_logging_flags, setup_logging
from backbone.flags import FlagParser

log = logging.getLogger("detection.convert")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (`--class-names` or `--class_names`)."""
    parser = FlagParser(description=__doc__)
    parser.add_argument(
        "src", help="The torchvision weight file (.pth), e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth."
    )
    parser.add_argument("dst", help="The checkpoint to write (.safetensors).")
    parser.add_argument(
        "--class-names", type=Path, help="A text file with one foreground class name per line, in label order."
    )
    add_logging_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    # torch and the detector's code only once the command runs, so that --help answers at once
    from backbone.weights import CheckpointError
    from detection.data.annotations import AnnotationError
    from detection.data.voc import read_class_names
    from detection.detector_checkpoint import convert_torchvision_detector

    class_names = None
    try:
        if args.class_names is not None:
            class_names = read_class_names(args.class_names)
        path = convert_torchvision_detector(args.src, args.dst, class_names=class_names)
    except (AnnotationError, CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
