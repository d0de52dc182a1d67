"""Analyses of trained CIFAR nets; today the layer responses of the paper's Fig. 7.

Fig. 7: "Standard deviations (std) of layer responses on CIFAR-10. The responses are the outputs of
each 3x3 layer, after BN and before nonlinearity" (and before the addition, in a residual block),
drawn in the original layer order and sorted by magnitude. ResNets' responses are smaller than
their plain counterparts', the evidence that residual functions sit closer to zero.

    python -m training.analysis layer_responses runs/plain20/model.safetensors \\
        runs/resnet20/model.safetensors --data data_cache/cifar10_uint8.pt -o fig7.png --json fig7.json

The std of a layer is taken over every element of its response on the whole test set (images,
channels and positions together), accumulated in float64.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from backbone.flags import FlagParser


def build_parser() -> argparse.ArgumentParser:
    """The command and its sub-command's flags, each in both spellings (`--batch-size`, `--batch_size`)."""
    parser = FlagParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    responses = commands.add_parser("layer_responses", help="Fig. 7: the std of each 3x3 layer's responses.")
    responses.add_argument("checkpoints", nargs="+", help="The model.safetensors files of CIFAR classifiers.")
    responses.add_argument("--data", required=True, help="CIFAR-10: a packed .pt, the JPEG tarball or class folders.")
    responses.add_argument("-o", "--output", default="fig7.png", help="The plot to write (default: fig7.png).")
    responses.add_argument("--json", default="", help="Also write {label: [std per layer]} to this file.")
    responses.add_argument("--device", default="auto", help='"auto", "cpu" or "cuda" (default: auto).')
    responses.add_argument("--batch_size", type=int, default=500, help="Images per forward pass (default: 500).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch and matplotlib load when the command runs, so that --help answers at once
    import torch

    from backbone.weights import CheckpointError
    from training.classification_data import DatasetError
    from training.layer_responses import layer_responses, plot_layer_responses

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    try:
        stds = layer_responses(args.checkpoints, data=args.data, device=device, batch_size=args.batch_size)
    except (CheckpointError, DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {plot_layer_responses(stds, args.output)}")
    if args.json:
        Path(args.json).write_text(json.dumps(stds, indent=1))
        print(f"wrote {args.json}")
    for label, values in stds.items():
        print(f"{label:>12}: {len(values)} layers, mean std {sum(values) / len(values):.3f}, max {max(values):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
