"""Writing evaluation output: metrics and COCO results files as JSON."""

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write atomically (temp file, then rename); nan becomes null, which strict JSON readers accept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        temporary.write_text(json.dumps(_nan_to_none(data), indent=1, allow_nan=False))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _nan_to_none(data: Any) -> Any:
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {key: _nan_to_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nan_to_none(value) for value in data]
    return data
