"""Where a checkpoint came from: the command, the whole config, the code's git commit and the date."""

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training.config import config_to_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD's hash, "+dirty" when the code that trains (backbone/, detection/, training/) has uncommitted
    changes, or "unknown" outside a git checkout (e.g. in a container)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "backbone", "detection", "training"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if changes else head


def run_provenance(config: Any, *, iterations: int, processes: int) -> dict[str, Any]:
    """The provenance block of a serving checkpoint's manifest, the same for every trainer."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": config_to_dict(config),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "iterations": iterations,
        "processes": processes,
    }
