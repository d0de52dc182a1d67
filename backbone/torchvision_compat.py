"""torchvision ResNet checkpoints <-> our key names, with errors that name what does not fit.

torchvision's ResNets are the "v1.5" layout (stride in the 3x3 of the bottleneck), so its weights
only reproduce its logits in a model built with `stride_in_1x1=False`.
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# (torchvision pattern, our replacement); applied in order, each at most once per key.
TORCHVISION_TO_OURS = (
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.bn."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
    (r"\.downsample\.0\.", ".shortcut.conv."),
    (r"\.downsample\.1\.", ".shortcut.bn."),
)
OURS_TO_TORCHVISION = (
    (r"^stem\.conv\.", "conv1."),
    (r"^stem\.bn\.", "bn1."),
    (r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}."),
    (r"\.shortcut\.conv\.", ".downsample.0."),
    (r"\.shortcut\.bn\.", ".downsample.1."),
)


class CheckpointError(RuntimeError):
    """A weight file that cannot be read, or whose tensors do not fit the model."""


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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file without unpickling arbitrary objects; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if pickled:  # torch.save(model): code to unpickle, which we never run
            raise CheckpointError(
                f"{path} holds a whole pickled Python object ({pickled.group(1)}), not a state dict of tensors: "
                "load it where its class is defined and save the weights with torch.save(model.state_dict(), path)"
            ) from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read {path} as a PyTorch weight file: {first_line}") from error
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """load_state_dict that reports every missing, unexpected and mis-shaped key at once."""
    expected = model.state_dict()
    # BatchNorm's step counter is bookkeeping, not a weight; FrozenBatchNorm2d has none.
    ignorable = re.compile(r"\.num_batches_tracked$")
    missing = sorted(k for k in expected if k not in state_dict and not ignorable.search(k))
    unexpected = sorted(k for k in state_dict if k not in expected and not ignorable.search(k))
    mismatched = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        lines = [f"weights from {source} do not fit {type(model).__name__}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(keys[:20])}" + (" ..." if len(keys) > 20 else ""))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)


def load_torchvision_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a torchvision ResNet weight file (e.g. resnet50-0676ba61.pth) into our model."""
    if getattr(model, "config", {}).get("block") == "bottleneck" and model.config["stride_in_1x1"]:
        raise ValueError(
            "torchvision ResNets put the stride in the 3x3 (v1.5); build the model with "
            "stride_in_1x1=False to load them"
        )
    state_dict = from_torchvision(read_state_dict(path))
    if getattr(model, "num_classes", 1) == 0:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    load_checked(model, state_dict, source=str(path))
    return model
