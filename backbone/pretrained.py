"""A ResNet from pretrained classifier weights: ours (.safetensors of training/pretrain.py) or torchvision's (.pth).

The one loader of backbone weights: a classifier, a detector backbone (`detection.pretrained` hands the
tensors on, res5 to the C4 head) and the benchmarks all read through `read_backbone_state`. An
architecture mismatch (depth, width, block, stride placement) is reported by name instead of loading
the wrong weights.
"""

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from backbone.serving_checkpoint import load_checkpoint
from backbone.torchvision_compat import from_torchvision, require_torchvision_layout
from backbone.weights import CheckpointError, load_checked, read_state_dict

# Fields that change which tensors exist or what they mean; num_classes, norm, freeze_at and
# out_features legitimately differ between a classifier and a detector backbone.
ARCHITECTURE_FIELDS = ("block", "layers", "stem", "base_width", "residual", "shortcut", "stride_in_1x1")


def read_backbone_state(path: str | os.PathLike, *, config: Mapping, with_fc: bool = False) -> dict[str, torch.Tensor]:
    """A pretrained classifier's tensors in our key names, checked against a backbone `config`.

    `path` is a resdet classifier checkpoint (.safetensors) or a torchvision ResNet weight file (.pth,
    e.g. resnet50-0676ba61.pth; needs stride_in_1x1=False). The classifier layer (fc) is dropped unless
    `with_fc`.
    """
    path = Path(path)
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
        require_torchvision_layout(config, source=str(path))
        state_dict = from_torchvision(read_state_dict(path))
    return {key: value for key, value in state_dict.items() if with_fc or not key.startswith("fc.")}


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, *, with_fc: bool = False) -> nn.Module:
    """Load a pretrained classifier into `model` (a ResNet: a backbone with num_classes=0, or a classifier).

    `with_fc`: the file's classifier layer too (the same classes, e.g. torchvision's ImageNet weights into
    a 1000-class resnet50, whose logits then equal torchvision's); otherwise a model with an fc keeps its
    own, freshly initialised one.
    """
    state = read_backbone_state(path, config=getattr(model, "config", {}), with_fc=with_fc)
    if not with_fc and hasattr(model, "fc"):
        state.update({key: value for key, value in model.state_dict().items() if key.startswith("fc.")})
    load_checked(model, state, source=str(path))
    return model


def _normalise(value):
    return list(value) if isinstance(value, tuple | list) else value
