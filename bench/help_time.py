"""Seconds `--help` takes for each command, against the same command with torch imported first (what every
`--help` paid before issue 25 made the heavy imports lazy): `python -m bench.help_time [--repeats 3]`.

Each pair runs round-robin (the median of `--repeats` runs), so a machine that others load slows both alike;
the CPU model and the load average are printed with the table.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -m service": ("module", "service"),
    "python -m backbone.summary": ("module", "backbone.summary"),
    "python -m detection.convert": ("module", "detection.convert"),
    "python -m detection.export": ("module", "detection.export"),
    "python -m detection.predict": ("module", "detection.predict"),
    "python -m detection.data.synthetic": ("module", "detection.data.synthetic"),
    "python -m training.plots": ("module", "training.plots"),
    "python -m training.analysis": ("module", "training.analysis"),
    "python -m training.device_data": ("module", "training.device_data"),
    "training/train_det.py": ("path", "training/train_det.py"),
    "training/pretrain.py": ("path", "training/pretrain.py"),
}


def help_command(kind: str, target: str, *, torch_first: bool) -> list[str]:
    """`python -m target --help` (or `python target --help`) as a user runs it, or the same through runpy with
    `import torch` before it (the anchor)."""
    if not torch_first:
        return [sys.executable, *(["-m"] if kind == "module" else []), target, "--help"]
    runner = "run_module" if kind == "module" else "run_path"
    code = (
        f"import torch, runpy, sys; sys.argv = [{target!r}, '--help']; runpy.{runner}({target!r}, run_name='__main__')"
    )
    return [sys.executable, "-c", code]


def seconds(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.help_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each command and of its anchor.")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before: {os.getloadavg()}")
    print("| command | --help (s) | with torch imported first (s) | ratio |\n|---|---:|---:|---:|")
    for name, (kind, target) in COMMANDS.items():
        light, heavy = [], []
        for _ in range(args.repeats):
            light.append(seconds(help_command(kind, target, torch_first=False)))
            heavy.append(seconds(help_command(kind, target, torch_first=True)))
        now, before = statistics.median(light), statistics.median(heavy)
        print(f"| `{name} --help` | {now:.2f} | {before:.2f} | {before / now:.1f}x |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
