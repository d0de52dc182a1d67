"""Convert a torchvision Faster R-CNN weight file into our detector checkpoint.

    python -m detection.convert fasterrcnn_resnet50_fpn_coco-258fb6c6.pth coco_r50_fpn.safetensors
    python -m detection.convert fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth coco_r50_fpn_v2.safetensors
    python -m detection.convert my_finetuned.pth mine.safetensors --class-names classes.txt

Handles ResNet-18..152 FPN backbones, the v1 (two fc) and v2 (4 conv + fc, 2-conv RPN, BN in the
FPN) heads. A 91-output file is taken to be COCO: labels 1..80 with COCO's names (see
detection/torchvision_compat.py for the id mapping). Nothing is downloaded.
"""

import argparse
import os
from pathlib import Path

from backbone.torchvision_compat import CheckpointError, load_checked, read_state_dict
from detection.builder import build_detector
from detection.checkpoint import save_detector
from detection.torchvision_compat import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    describe_torchvision_detector,
    rename_torchvision_detector,
)


def convert_torchvision_detector(
    src: str | os.PathLike, dst: str | os.PathLike, *, class_names: list[str] | None = None
) -> Path:
    """Read a torchvision Faster R-CNN state dict from `src`, write our checkpoint to `dst`."""
    state_dict = read_state_dict(src)
    kwargs = describe_torchvision_detector(state_dict)
    is_coco = bool(kwargs["unused_class_ids"])
    if class_names is None:
        class_names = list(COCO_CLASS_NAMES) if is_coco else [f"class_{i}" for i in range(1, kwargs["num_classes"] + 1)]
    if len(class_names) != kwargs["num_classes"]:
        raise ValueError(f"{len(class_names)} class names given, but {src} has {kwargs['num_classes']} classes")
    model = build_detector(**kwargs, class_names=class_names)
    load_checked(model, rename_torchvision_detector(state_dict), source=str(src))
    provenance = {"converted_from": Path(src).name, "source_format": "torchvision FasterRCNN state dict"}
    if is_coco:
        provenance["coco_category_ids"] = list(COCO_CATEGORY_IDS)  # label i is COCO category id [i - 1]
    return save_detector(dst, model=model, class_names=class_names, provenance=provenance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="torchvision weight file (.pth), e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    parser.add_argument("dst", help="output checkpoint (.safetensors)")
    parser.add_argument("--class-names", type=Path, help="text file, one foreground class name per line, label order")
    args = parser.parse_args()
    class_names = None
    if args.class_names is not None:
        class_names = [line.strip() for line in args.class_names.read_text().splitlines() if line.strip()]
    try:
        path = convert_torchvision_detector(args.src, args.dst, class_names=class_names)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
