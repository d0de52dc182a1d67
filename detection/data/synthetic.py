"""Write the synthetic shapes dataset (COCO and VOC layouts, train and val) to a folder.

python -m detection.data.synthetic --out runs/shapes --num-train 1000 --num-val 200 --image-size 192 --seed 0
"""

import argparse
import logging

from backbone.command_logging import add_logging_flags, setup_logging
from backbone.flags import FlagParser
from detection.data.synthetic_shapes import SHAPE_CLASSES, generate_synthetic

log = logging.getLogger("detection.data.synthetic")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (`--num-train` or `--num_train`)."""
    parser = FlagParser(description=__doc__)
    parser.add_argument("--out", required=True, help="The output folder (it gets coco/ and voc/).")
    parser.add_argument("--num-train", type=int, default=1000, help="Training images (default: 1000).")
    parser.add_argument("--num-val", type=int, default=200, help="Held-out images (default: 200).")
    parser.add_argument("--image-size", type=int, default=192, help="Square image side in pixels (default: 192).")
    parser.add_argument("--seed", type=int, default=0, help="The same seed gives the same bytes (default: 0).")
    parser.add_argument("--max-objects", type=int, default=4, help="Objects per image, at most (default: 4).")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    layout = generate_synthetic(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.seed,
        max_objects=args.max_objects,
    )
    log.info("wrote %d train + %d val images of %dpx, classes %s", args.num_train, args.num_val, args.image_size,
             SHAPE_CLASSES)  # fmt: skip
    train_images = layout.coco_image_dir("train")
    log.info("COCO: %s with images in %s (and val)", layout.coco_annotation_file("train"), train_images)
    log.info("VOC: %s (ImageSets/Main/train.txt, val.txt; class names in classes.txt)", layout.voc_root)


if __name__ == "__main__":
    main()
