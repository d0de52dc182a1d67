"""A detector from pretrained weights: a whole detector (ours or torchvision's Faster R-CNN), or its backbone
from a classifier (ours or torchvision's ResNet; for C4, res5 goes to the per-RoI head)."""

import os
from pathlib import Path
from typing import Any

from torch import nn

from backbone.pretrained import read_backbone_state
from backbone.registry import MODELS
from backbone.serving_checkpoint import load_checkpoint, read_manifest
from backbone.weights import load_checked, read_state_dict
from detection.options import DetectorOptions
from detection.torchvision_compat import describe_torchvision_detector, rename_torchvision_detector

# The detector options that decide which tensors exist and what they mean: a whole-detector --init
# takes them from the file (stride_in_1x1 keeps every shape but moves the stride: v1.5 weights in the
# paper's layout would load and compute something else).
DETECTOR_ARCHITECTURE_OPTIONS = (
    "stride_in_1x1", "base_width", "shortcut", "fpn_channels", "fpn_norm", "anchor_sizes", "anchor_ratios",
    "rpn_conv_depth", "box_head", "representation_size",
)  # fmt: skip


def detector_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """The build_detector arguments a detector file fixes (backbone, head, DETECTOR_ARCHITECTURE_OPTIONS);
    {} for a classifier, which only initialises a backbone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init file not found: {path}")
    if path.suffix == ".safetensors":
        manifest = read_manifest(path)
        if manifest["kind"] != "detector":
            return {}
        config = manifest["architecture_kwargs"]
    else:
        state_dict = read_state_dict(path)
        if not any(key.startswith("backbone.body.") for key in state_dict):
            return {}
        # what the file does not say (width, FPN channels, anchors) is torchvision's, our defaults
        config = {**DetectorOptions().to_dict(), **describe_torchvision_detector(state_dict)}
    keys = ("backbone", "head", *DETECTOR_ARCHITECTURE_OPTIONS)
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items() if key in keys}


def initialise_detector(detector: nn.Module, path: str | os.PathLike) -> str:
    """Initialise a `detection.Detector` from pretrained weights; returns what was loaded.

    A detector (our .safetensors, or a torchvision Faster R-CNN .pth) initialises the whole model; when its
    classes differ from ours, the class-specific predictor (classifier and box regressor) keeps its fresh
    initialisation, the usual fine-tuning from COCO. A classifier (ours, or a torchvision ResNet .pth)
    initialises the backbone (for C4, res5 goes to the per-RoI head).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init file not found: {path}")
    detector_state = None
    if path.suffix == ".safetensors":
        state_dict, manifest = load_checkpoint(path)
        if manifest["kind"] == "detector":
            detector_state = state_dict
    else:
        state_dict = read_state_dict(path)
        if any(key.startswith("backbone.body.") for key in state_dict):
            detector_state = rename_torchvision_detector(state_dict)
    if detector_state is not None:
        own = detector.state_dict()
        predictor = [k for k in own if k.startswith("roi_heads.box_predictor.")]
        refit = [k for k in predictor if k in detector_state and detector_state[k].shape != own[k].shape]
        if refit:  # other classes: keep our predictor
            detector_state = {**detector_state, **{k: own[k] for k in predictor}}
        load_checked(detector, detector_state, source=str(path))
        return "the whole detector" + (" except its class-specific predictor" if refit else "")
    backbone = detector.features.backbone
    # a C4 backbone stops at res4: compare against the full depth, whose res5 the head holds
    config = {**backbone.config, "layers": MODELS[detector.config["backbone"]]["layers"]}
    detector.load_backbone_state_dict(read_backbone_state(path, config=config), source=str(path))
    return "the backbone"
