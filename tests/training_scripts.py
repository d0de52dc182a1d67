"""Running training/pretrain.py and training/train_det.py as a user does: flags, subprocesses, kill -9."""

import signal
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from bench.processes import repo_env
from training.config import make_config
from training.plots import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_2_PROCESSES = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def config_flags(config: Any) -> list[str]:
    """The command line that gives `config` (what a user types): only the fields off their defaults."""
    args = []
    defaults = type(config)()
    for field in fields(config):
        value = getattr(config, field.name)
        if is_dataclass(value):  # the detector's options: flags of their own names
            args += config_flags_against(value, getattr(defaults, field.name))
        elif value != getattr(defaults, field.name):
            args += flag(field.name, value)
    return args


def config_flags_against(options: Any, defaults: Any) -> list[str]:
    return [arg for f in fields(options) if getattr(options, f.name) != getattr(defaults, f.name)
            for arg in flag(f.name, getattr(options, f.name))]  # fmt: skip


def flag(name: str, value: Any) -> list[str]:
    values = value if isinstance(value, tuple) else (value,)
    return [f"--{name}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]


def script_env() -> dict[str, str]:
    return repo_env(OMP_NUM_THREADS="1")


def script_command(script: str, config: Any, *, launcher: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *launcher, str(REPO_ROOT / "training" / script), *config_flags(config)]


def run_script(script: str, config: Any, *, launcher: tuple[str, ...] = (), timeout: float = 400):
    """Run to the end; a failure shows the script's stderr."""
    result = subprocess.run(script_command(script, config, launcher=launcher), cwd=REPO_ROOT, env=script_env(),
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_9_once_written(script: str, config: Any, path: Path, *, timeout: float = 300) -> None:
    """Start the script and SIGKILL it as soon as `path` (its first checkpoint) exists."""
    process = subprocess.Popen(script_command(script, config), cwd=REPO_ROOT, env=script_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def train_losses(output_dir: Path) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"}


def assert_resumes_exactly_after_kill_9(script: str, config_class: type, reference: Any, killed: Any, *,
                                        first_checkpoint: int, timeout: float = 300) -> dict:  # fmt: skip
    """Run `reference` through; run `killed` (same settings, another output_dir), SIGKILL it once its first
    last.pt exists, resume it with --resume auto, and check that every iteration after the checkpoint has
    the reference's loss bit for bit (CPU). Returns the checkpoint the kill left."""
    iterations = reference.max_iterations
    run_script(script, reference)
    last = Path(killed.output_dir) / "last.pt"
    kill_9_once_written(script, killed, last, timeout=timeout)
    checkpoint = torch.load(last, weights_only=True)
    assert first_checkpoint <= checkpoint["iteration"] < iterations
    run_script(script, make_config(config_class, {**vars(killed), "resume": "auto"}))
    expected, resumed = train_losses(Path(reference.output_dir)), train_losses(Path(killed.output_dir))
    assert sorted(resumed) == list(range(1, iterations + 1))
    after = [i for i in range(1, iterations + 1) if i > checkpoint["iteration"]]
    assert [resumed[i] for i in after] == [expected[i] for i in after]  # bit-for-bit on CPU
    return checkpoint
