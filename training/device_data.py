"""Pack CIFAR-10 once into one uint8 file that `--data_on_device` training (training/device_cifar.py) loads in a
second.

    # the JPEG tarball (or the python batches)
    python -m training.device_data pack ../shared/data/cifar10-jpeg.tar.gz -o data_cache/cifar10_uint8.pt
"""

import argparse
import sys
from collections.abc import Sequence

from backbone.flags import FlagParser


def build_parser() -> argparse.ArgumentParser:
    """The command and its sub-command's flags, each in both spellings (`--cache-dir`, `--cache_dir`)."""
    parser = FlagParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser("pack", help="Decode CIFAR-10 once into one uint8 .pt file.")
    pack_parser.add_argument(
        "source", help="The JPEG tarball, a class-folder root, or the folder of the python batches."
    )
    pack_parser.add_argument("-o", "--output", required=True, help="The packed file to write (a .pt file).")
    pack_parser.add_argument("--dataset", default="folder", choices=("folder", "cifar10"),
                             help='"folder": <split>/<class>/<images>; "cifar10": the python batches.')  # fmt: skip
    pack_parser.add_argument(
        "--cache_dir", default="data_cache", help="Where a tarball is extracted (default: data_cache)."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch loads when the command runs, so that --help answers at once
    from training.classification_data import DatasetError
    from training.device_cifar import load_cifar_arrays, pack

    try:
        arrays = load_cifar_arrays(args.source, kind=args.dataset, cache_dir=args.cache_dir)
        output = pack(arrays, args.output)
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {output}: {len(arrays.train_labels)} training and {len(arrays.test_labels)} test images, "
        f"{output.stat().st_size / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
