"""The environment of a child Python process that must import this checkout's packages."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_env(**overrides: str) -> dict[str, str]:
    """os.environ with the repository root put first on PYTHONPATH (what was there is kept: on a GPU
    machine the carried packages live there), plus `overrides`."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **overrides}
