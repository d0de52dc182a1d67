"""Shared by the Ray test modules: skip without Ray, and the processes a loopback cluster started.

Each Ray test module starts one cluster (detection.ray_local.local_cluster: 127.0.0.1 nodes, its own temp
folder, shut down in `finally`) for all its tests: a cluster costs 5-25 s to start on this machine.
"""

import os
import time
from pathlib import Path

import pytest

NO_RAY = "Ray is not installed: pip install 'resdet[ray]' (the dev extra, which `make test` installs, has it)"


def require_ray() -> None:
    """Skip the calling module when Ray is absent; import it under the loopback environment."""
    pytest.importorskip("ray", reason=NO_RAY)
    from detection.ray_local import import_ray

    import_ray()


def descendants(pid: int | None = None) -> dict[int, bytes]:
    """Every living process below `pid` (default: this one), by pid, with its command line."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = {}, list(children.get(pid, []))
    while stack:
        child = stack.pop()
        if (command := cmdline(child)) is not None:
            found[child] = command
        stack += children.get(child, [])
    return found


def cmdline(pid: int) -> bytes | None:
    """The process's command line, or None when it is gone (a zombie counts as gone: it runs nothing)."""
    try:
        if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None


def still_running(processes: dict[int, bytes], *, within_s: float) -> dict[int, bytes]:
    """Those of `processes` (pid -> command line) still running the same command after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        alive = {pid: command for pid, command in processes.items() if cmdline(pid) == command}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)
