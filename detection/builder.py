"""`build_detector`: backbone name + head + options -> Detector. A plain dict maps head names to builders."""

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead

from backbone import create_model
from backbone.registry import MODELS
from detection.detector import Detector
from detection.features import C4Features, FPNFeatures
from detection.options import C4_ANCHOR_SIZES, FPN_ANCHOR_SIZES, HEADS, DetectorOptions
from detection.poolers import MultiLevelRoIAlign, SingleLevelRoIAlign
from detection.roi_heads import Res5Head, RoIHeads, roi_heads_kwargs
from detection.rpn import build_rpn
from detection.transform import build_transform

DETECTOR_BACKBONES = [name for name, kwargs in MODELS.items() if kwargs.get("stem", "imagenet") == "imagenet"]


def _backbone_kwargs(options: DetectorOptions) -> dict[str, Any]:
    return dict(
        num_classes=0,
        stride_in_1x1=options.stride_in_1x1,
        base_width=options.base_width,
        shortcut=options.shortcut,
        norm="frozen_bn" if options.frozen_bn else "bn",
        freeze_at=options.freeze_at,
    )


def _init_predictor(predictor: FastRCNNPredictor) -> FastRCNNPredictor:
    """Small initial outputs (detectron2's init; torchvision keeps nn.Linear's): near-uniform class
    scores and near-zero box deltas, so training from scratch starts from the proposals themselves."""
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return predictor


def _predictor_inputs(head_width: int, options: DetectorOptions) -> int:
    # global context concatenates the whole image's box-head feature with each region's
    return head_width * 2 if options.global_context else head_width


def _build_fpn(backbone: str, num_columns: int, options: DetectorOptions) -> dict[str, nn.Module]:
    resnet = create_model(backbone, **_backbone_kwargs(options), out_features=("res2", "res3", "res4", "res5"))
    features = FPNFeatures(
        backbone=resnet,
        out_channels=options.fpn_channels,
        norm_layer=nn.BatchNorm2d if options.fpn_norm == "bn" else None,
    )
    levels = list(features.strides)
    rpn = build_rpn(
        in_channels=features.out_channels, num_levels=len(levels), options=options, default_sizes=FPN_ANCHOR_SIZES
    )
    # RoIs are pooled from P2..P5 (P6 only feeds the RPN), 7x7, level by box size as in the FPN paper.
    pooler = MultiLevelRoIAlign(
        strides={name: features.strides[name] for name in levels[:-1]}, output_size=7, sampling_ratio=2
    )
    if options.box_head == "mlp":
        box_head = TwoMLPHead(features.out_channels * 7 * 7, options.representation_size)
    else:
        box_head = FastRCNNConvFCHead(
            (features.out_channels, 7, 7), [features.out_channels] * 4, [options.representation_size],
            norm_layer=nn.BatchNorm2d,
        )  # fmt: skip
    predictor = _init_predictor(FastRCNNPredictor(_predictor_inputs(options.representation_size, options), num_columns))
    return dict(features=features, rpn=rpn, pooler=pooler, box_head=box_head, predictor=predictor)


def _build_c4(backbone: str, num_columns: int, options: DetectorOptions) -> dict[str, nn.Module]:
    layers = MODELS[backbone]["layers"]
    # The backbone stops at res4; res5 becomes the per-RoI head (load pretrained res5 weights with
    # Detector.load_backbone_state_dict).
    resnet = create_model(backbone, **_backbone_kwargs(options), layers=layers[:3], out_features=("res4",))
    features = C4Features(backbone=resnet)
    rpn = build_rpn(in_channels=features.out_channels, num_levels=1, options=options, default_sizes=C4_ANCHOR_SIZES)
    pooler = SingleLevelRoIAlign(feature_name="res4", stride=features.strides["res4"], output_size=14)
    box_head = Res5Head(
        res4=resnet.feature_info["res4"], backbone_config=resnet.config, num_blocks=layers[3],
        frozen_bn=options.frozen_bn,
    )  # fmt: skip
    predictor = _init_predictor(FastRCNNPredictor(_predictor_inputs(box_head.out_channels, options), num_columns))
    return dict(features=features, rpn=rpn, pooler=pooler, box_head=box_head, predictor=predictor)


HEAD_BUILDERS: dict[str, Callable[[str, int, DetectorOptions], dict[str, nn.Module]]] = {
    "fpn": _build_fpn,
    "c4": _build_c4,
}


def build_detector(
    *,
    backbone: str = "resnet50",
    head: str = "fpn",
    num_classes: int,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Detector:
    """Faster R-CNN on `backbone` (resnet18..152 or plain18..152) with the "fpn" or "c4" head.

    num_classes counts foreground classes (label ids 1..num_classes; 0 is background);
    class_names lists their names in that order (default "class_1", ...). Every other keyword is a
    field of DetectorOptions. All arguments except class_names are JSON-able and stored in
    `detector.config`, which is what a checkpoint's manifest keeps to rebuild the model.
    """
    if backbone not in DETECTOR_BACKBONES:
        raise ValueError(f"backbone must be one of {DETECTOR_BACKBONES}, got {backbone!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes (foreground classes) must be a positive int, got {num_classes!r}")
    resolved = DetectorOptions(**options)
    if class_names is None:
        class_names = [f"class_{label}" for label in range(1, num_classes + 1)]
    num_columns = num_classes + 1 + len(resolved.unused_class_ids)
    parts = HEAD_BUILDERS[head](backbone, num_columns, resolved)
    roi_heads = RoIHeads(
        box_roi_pool=parts["pooler"],
        box_head=parts["box_head"],
        box_predictor=parts["predictor"],
        num_classes=num_classes,
        **roi_heads_kwargs(resolved),
    )
    return Detector(
        transform=build_transform(resolved),
        features=parts["features"],
        rpn=parts["rpn"],
        roi_heads=roi_heads,
        class_names=class_names,
        config=dict(backbone=backbone, head=head, num_classes=num_classes, **resolved.to_dict()),
    )
