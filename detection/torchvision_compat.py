"""torchvision Faster R-CNN checkpoints -> our detector, and COCO's label space.

Key names: ours differ from torchvision's only in the backbone's prefix and ResNet names
(backbone.body.layer1.0.conv1 -> features.backbone.res2.0.conv1, via backbone.torchvision_compat),
the FPN's prefix (backbone.fpn. -> features.fpn.) and the pre-0.6 RPN head key (rpn.head.conv. ->
rpn.head.conv.0.0.), which the COCO v1 file still uses. rpn.* and roi_heads.* are otherwise identical.

Labels: torchvision's COCO models have 91 outputs, one per COCO category id 1..90 plus background,
and 10 of those ids are not used by COCO (TORCHVISION_UNUSED_COCO_IDS). A converted detector keeps all
91 outputs (so its softmax, and hence every score, is torchvision's) with those ten marked
`unused_class_ids`: never reported. Its labels are contiguous 1..80 with the 80 COCO names;
COCO_CATEGORY_IDS[label - 1] is the COCO category id of a label (also in the manifest's provenance).
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision

from backbone.torchvision_compat import from_torchvision
from backbone.weights import CheckpointError, load_checked, read_state_dict
from detection.builder import build_detector
from detection.detector import Detector

# COCO 2017 category ids in order, and their names (instances_*.json "categories").
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
TORCHVISION_COCO_OUTPUTS = 91
TORCHVISION_UNUSED_COCO_IDS = tuple(sorted(set(range(1, TORCHVISION_COCO_OUTPUTS)) - set(COCO_CATEGORY_IDS)))
# File suffixes read as torchvision state dicts (converted on load); anything else is our .safetensors.
TORCHVISION_SUFFIXES = (".pth", ".pt")

# torchvision ResNet (blocks per stage, bottleneck?) -> our backbone name.
RESNET_LAYOUTS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def make_trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """A randomly initialised torchvision detector made to behave like a trained COCO one where it matters
    (no weight file can be downloaded here; tests and benchmarks use this): non-trivial BN statistics,
    spread-out class scores, and never the 10 unused COCO ids. In place; the model in eval mode."""
    norms = (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, norms):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.1, 0.1)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.3)
        model.roi_heads.box_predictor.cls_score.bias[list(TORCHVISION_UNUSED_COCO_IDS)] = -30.0
    return model.eval()


def rename_torchvision_detector(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision FasterRCNN keys -> ours (tensors shared, not copied)."""
    body = {k.removeprefix("backbone.body."): v for k, v in state_dict.items() if k.startswith("backbone.body.")}
    renamed = {f"features.backbone.{k}": v for k, v in from_torchvision(body).items()}
    for key, value in state_dict.items():
        if key.startswith("backbone.body."):
            continue
        key = re.sub(r"^backbone\.fpn\.", "features.fpn.", key)
        key = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", key)
        renamed[key] = value
    return renamed


def describe_torchvision_detector(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The build_detector kwargs (without class names) of a torchvision ResNet-FPN Faster R-CNN."""
    if any(k.startswith("features.backbone.") for k in state_dict):
        raise CheckpointError(
            "holds this project's own detector weights (a training checkpoint such as last.pt), not torchvision's: "
            "use the model.safetensors that training wrote beside it"
        )
    if "roi_heads.box_predictor.cls_score.weight" not in state_dict or not any(
        k.startswith("backbone.fpn.") for k in state_dict
    ):
        what = "a ResNet classifier's weights" if "fc.weight" in state_dict and "conv1.weight" in state_dict else None
        raise CheckpointError(
            f"{what or 'not a torchvision ResNet-FPN Faster R-CNN state dict'} (no backbone.fpn / box predictor): "
            "resdet serves ResNet-FPN Faster R-CNN detectors; a classifier goes to train_det.py --init"
        )
    if not any(k.startswith("backbone.body.layer1.") for k in state_dict):
        body = sorted({".".join(k.split(".")[:3]) for k in state_dict if k.startswith("backbone.body.")})
        raise CheckpointError(
            f"a torchvision Faster R-CNN whose backbone is not a ResNet ({', '.join(body[:2]) or 'no backbone.body'}"
            "; e.g. fasterrcnn_mobilenet_v3_large_fpn): resdet builds ResNet-18..152 FPN detectors only; use a "
            "ResNet-FPN Faster R-CNN (fasterrcnn_resnet50_fpn) or train one with training/train_det.py"
        )
    layers = tuple(
        len({k.split(".")[3] for k in state_dict if k.startswith(f"backbone.body.layer{stage}.")})
        for stage in (1, 2, 3, 4)
    )
    bottleneck = "backbone.body.layer1.0.conv3.weight" in state_dict
    if (layers, bottleneck) not in RESNET_LAYOUTS:
        raise CheckpointError(f"backbone with blocks per stage {layers} (bottleneck={bottleneck}) is not one we build")
    num_outputs = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
    is_coco = num_outputs == TORCHVISION_COCO_OUTPUTS
    v2 = "roi_heads.box_head.0.0.weight" in state_dict
    rpn_convs = {k.split(".")[3] for k in state_dict if re.match(r"^rpn\.head\.conv\.\d+\.0\.weight$", k)}
    return dict(
        backbone=RESNET_LAYOUTS[(layers, bottleneck)],
        head="fpn",
        num_classes=len(COCO_CATEGORY_IDS) if is_coco else num_outputs - 1,
        stride_in_1x1=False,  # torchvision's ResNets are v1.5: stride in the 3x3
        frozen_bn=True,
        freeze_at=2,
        fpn_norm="bn" if "backbone.fpn.inner_blocks.0.1.weight" in state_dict else "none",
        rpn_conv_depth=max(len(rpn_convs), 1),
        box_head="conv_fc" if v2 else "mlp",
        representation_size=state_dict["roi_heads.box_predictor.cls_score.weight"].shape[1],
        unused_class_ids=list(TORCHVISION_UNUSED_COCO_IDS) if is_coco else [],
    )


def load_torchvision_detector(
    path: str | os.PathLike, *, class_names: list[str] | None = None
) -> tuple[Detector, dict[str, Any]]:
    """A torchvision Faster R-CNN weight file as our detector (eval mode) and the provenance to record.

    class_names: foreground names in label order; default COCO's for a 91-output file, else class_1..K.
    Errors (CheckpointError, ValueError) say in one line what the file is and what to use instead.
    """
    state_dict = read_state_dict(path)
    try:
        kwargs = describe_torchvision_detector(state_dict)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    is_coco = bool(kwargs["unused_class_ids"])
    if class_names is None:
        class_names = list(COCO_CLASS_NAMES) if is_coco else [f"class_{i}" for i in range(1, kwargs["num_classes"] + 1)]
    if len(class_names) != kwargs["num_classes"]:
        raise ValueError(f"{len(class_names)} class names given, but {path} has {kwargs['num_classes']} classes")
    model = build_detector(**kwargs, class_names=class_names)
    load_checked(model, rename_torchvision_detector(state_dict), source=str(path))
    provenance = {"converted_from": Path(path).name, "source_format": "torchvision FasterRCNN state dict"}
    if is_coco:
        provenance["coco_category_ids"] = list(COCO_CATEGORY_IDS)  # label i is COCO category id [i - 1]
    return model.eval(), provenance
