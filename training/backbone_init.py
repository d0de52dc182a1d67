"""Initialise a detector's backbone from a pretrained classifier: ours (.safetensors) or torchvision's (.pth).

The classifier's fc layer is dropped; every other tensor must fit, and an architecture mismatch
(depth, width, block, stride placement) is reported by name instead of loading the wrong weights.
"""

import os
from pathlib import Path

from torch import nn

from backbone.checkpoint import load_checkpoint
from backbone.torchvision_compat import CheckpointError, from_torchvision, load_checked, read_state_dict

# Fields that change which tensors exist or what they mean; num_classes, norm, freeze_at and
# out_features legitimately differ between a classifier and a detector backbone.
ARCHITECTURE_FIELDS = ("block", "layers", "stem", "base_width", "residual", "shortcut", "stride_in_1x1")


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a pretrained classifier into `model` (a ResNet, typically num_classes=0, frozen BN), ignoring fc.

    `path` is a resdet classifier checkpoint (.safetensors, from training/pretrain.py) or a
    torchvision ResNet weight file (.pth, e.g. resnet50-0676ba61.pth; needs stride_in_1x1=False).
    """
    path = Path(path)
    config = getattr(model, "config", {})
    if path.suffix == ".safetensors":
        state_dict, manifest = load_checkpoint(path)
        if manifest["kind"] != "classifier":
            raise CheckpointError(f"{path} holds a {manifest['kind']}, not a classifier to initialise a backbone from")
        saved = manifest.get("architecture_kwargs", {})
        mismatched = [
            f"{field}: checkpoint {saved[field]!r} vs model {config[field]!r}"
            for field in ARCHITECTURE_FIELDS
            if field in saved and field in config and _normalise(saved[field]) != _normalise(config[field])
        ]
        if mismatched:
            raise CheckpointError(
                f"{path} ({manifest['architecture']}) does not fit this backbone: " + "; ".join(mismatched)
            )
    else:
        if config.get("block") == "bottleneck" and config.get("stride_in_1x1", False):
            raise CheckpointError(
                f"{path}: torchvision ResNets put the stride in the 3x3 (v1.5); build the backbone with "
                "stride_in_1x1=False to load them"
            )
        state_dict = from_torchvision(read_state_dict(path))
    backbone_state = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    if hasattr(model, "fc"):  # a backbone that keeps a classifier keeps its own, freshly initialised fc
        backbone_state.update({key: value for key, value in model.state_dict().items() if key.startswith("fc.")})
    load_checked(model, backbone_state, source=str(path))
    return model


def _normalise(value):
    return list(value) if isinstance(value, tuple | list) else value
