"""torchvision ResNet checkpoints <-> our key names, with errors that name what does not fit.

torchvision's ResNets are the "v1.5" layout (stride in the 3x3 of the bottleneck), so its weights
only reproduce its logits in a model built with `stride_in_1x1=False`.
"""

import re
from collections.abc import Mapping

import torch

from backbone.weights import CheckpointError

# torchvision's name <-> ours for the parts named differently ("^": at the start of a key); its stages
# layer1..4 are our res2..5. Both directions are made from this one table.
NAME_PAIRS = (
    ("^conv1.", "^stem.conv."),
    ("^bn1.", "^stem.bn."),
    (".downsample.0.", ".shortcut.conv."),
    (".downsample.1.", ".shortcut.bn."),
)


def _rename_table(*, to_ours: bool) -> tuple:
    """(pattern, replacement) pairs for `rename_keys`, each applied at most once per key."""
    source_stage, target_stage, offset = ("layer", "res", 1) if to_ours else ("res", "layer", -1)
    table = [(rf"^{source_stage}(\d)\.", lambda m: f"{target_stage}{int(m.group(1)) + offset}.")]
    for torchvision_name, our_name in NAME_PAIRS:
        source, target = (torchvision_name, our_name) if to_ours else (our_name, torchvision_name)
        anchor = "^" if source.startswith("^") else ""
        table.append((anchor + re.escape(source.removeprefix("^")), target.removeprefix("^")))
    return tuple(table)


TORCHVISION_TO_OURS = _rename_table(to_ours=True)
OURS_TO_TORCHVISION = _rename_table(to_ours=False)


def rename_keys(state_dict: Mapping[str, torch.Tensor], table) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in table:
            key = re.sub(pattern, replacement, key, count=1)
        renamed[key] = value
    return renamed


def from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict to our keys."""
    return rename_keys(state_dict, TORCHVISION_TO_OURS)


def to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our state dict to torchvision's keys (FrozenBatchNorm2d has no num_batches_tracked;
    torchvision's BatchNorm2d tolerates its absence)."""
    return rename_keys(state_dict, OURS_TO_TORCHVISION)


def require_torchvision_layout(config: Mapping, *, source: str) -> None:
    """torchvision's bottleneck ResNets put the stride in the 3x3 ("v1.5"): their weights compute something
    else in the paper's layout (stride in the first 1x1), so refuse to load them there."""
    if config.get("block") == "bottleneck" and config.get("stride_in_1x1", False):
        raise CheckpointError(
            f"{source}: torchvision ResNets put the stride in the 3x3 (v1.5); build the model with "
            "stride_in_1x1=False to load them"
        )
