"""Writing evaluation output: metrics and COCO results files as JSON."""

import json
import math
import os
from pathlib import Path
from typing import Any

from backbone.files import write_atomically


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write atomically (`backbone.files.write_atomically`); nan becomes null, which strict JSON readers accept."""
    text = json.dumps(_nan_to_none(data), indent=1, allow_nan=False)
    return write_atomically(path, lambda temporary: temporary.write_text(text))


def _nan_to_none(data: Any) -> Any:
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {key: _nan_to_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nan_to_none(value) for value in data]
    return data
