"""Reading weight files and loading tensors into models, with errors that name the file and every key.

The one place for this, used by every package: `CheckpointError` (a weight file that cannot be read
or does not fit), `read_state_dict` (a PyTorch weight file, never unpickling code) and `load_checked`
(load_state_dict that reports all missing, unexpected and mis-shaped keys at once).
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A weight file that cannot be read, or whose tensors do not fit the model."""


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
