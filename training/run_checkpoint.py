"""Resumable training checkpoints: written atomically, read with errors that name the file.

A training checkpoint is a `torch.save`d dict of tensors and plain values (loaded back with
`weights_only=True`, so nothing foreign is unpickled): the unwrapped model, optimizer, LR
schedule, grad scaler, progress counters, every rank's RNG states and the config. It is for
resuming; serving uses the safetensors format of `backbone.serving_checkpoint`.
"""

import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbone.files import write_atomically
from backbone.weights import CheckpointError
from training.config import config_differences
from training.distributed import DistributedContext, all_gather_objects
from training.run_log import report

FORMAT_NAME = "resdet.training"
FORMAT_VERSION = 1


def save_training_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write atomically (`backbone.files.write_atomically`): a kill -9 leaves the old file whole."""
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **state}
    return write_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_training_checkpoint`; a missing, truncated or foreign file says so."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, ...: torch raises several types
        raise CheckpointError(
            f"cannot read training checkpoint {path} (truncated or not a resdet training checkpoint): {error}"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a resdet training checkpoint (no '{FORMAT_NAME}' format marker)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {state['format_version']} is newer than this code")
    return state


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA generator states, as tensors and plain values."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This rank's own device only: every visible GPU's state could not be restored where fewer are
        # visible (issue 17), and the other GPUs' streams belong to the other ranks.
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        device = torch.cuda.current_device()
        cuda_state = state["cuda"]
        if isinstance(cuda_state, (list, tuple)):  # checkpoints before issue 17: every visible GPU's state
            cuda_state = cuda_state[device] if device < len(cuda_state) else cuda_state[0]
        torch.cuda.set_rng_state(cuda_state, device)


def resume_training(
    resume: str,
    *,
    output_dir: Path,
    config: dict[str, Any],
    ctx: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    scaler: Any,
    window: Any,
) -> dict[str, Any] | None:
    """Restore everything a run needs to continue exactly: `resume` is a checkpoint path, or "auto"
    (output_dir/last.pt when it exists). Returns the checkpoint (for its counters), None if none."""
    path = output_dir / "last.pt" if resume == "auto" else Path(resume) if resume else None
    if path is None or not checkpoint_on_every_rank(path, ctx=ctx, required=resume != "auto"):
        return None
    state = load_training_checkpoint(path)
    changed = config_differences(state["config"], config)
    changed.pop("resume", None)
    if changed:
        report(f"warning: config differs from {path}: {changed}", ctx=ctx, level=logging.WARNING)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if scaler.is_enabled() and not state["scaler"]:
        # torch's own message ("source state dict is empty ... disabled instance") names neither cause.
        saved_amp = state["config"].get("amp", "?")
        raise CheckpointError(
            f"{path} was saved without fp16 loss scaling (--amp {saved_amp}), and this run uses --amp fp16: "
            f"resume with --amp {saved_amp}, or start a new --output_dir to switch precision"
        )
    scaler.load_state_dict(state["scaler"])
    window.load_state_dict(state["window"], device=ctx.device)
    rng_states = state["rng"]  # one per rank; a run resumed on another world size takes rank 0's
    restore_rng_state(rng_states[ctx.rank] if len(rng_states) == ctx.world_size else rng_states[0])
    report(f"resumed from {path} at iteration {state['iteration']}", ctx=ctx)
    return state


def checkpoint_on_every_rank(path: Path, *, ctx: DistributedContext, required: bool) -> bool:
    """Whether every rank sees `path`; False when none does (and not `required`), an error naming the ranks
    that lack it otherwise. Without a shared filesystem last.pt exists on rank 0's node only: the other
    nodes would start from scratch while rank 0 resumed, or fail alone and leave the others in a collective."""
    seen = all_gather_objects((path.is_file(), socket.gethostname()), ctx)
    missing = [rank for rank, (exists, _) in enumerate(seen) if not exists]
    if not missing or (not required and len(missing) == len(seen)):
        return not missing
    hosts = sorted({host for rank, (_, host) in enumerate(seen) if rank in missing})
    raise FileNotFoundError(
        f"training checkpoint {path} is missing on rank(s) {missing} (host(s) {', '.join(hosts)}) of {len(seen)}: "
        "put the output directory on a filesystem every node shares, or copy the checkpoint to each node"
    )


@dataclass(kw_only=True)
class RunCheckpoints:
    """last.pt and best.pt of one run: what they hold (everything an exact resume needs), and resuming."""

    output_dir: Path
    ctx: DistributedContext
    config: dict[str, Any]
    class_names: list[str]
    model: torch.nn.Module  # the unwrapped module, never the DDP or compiled wrapper
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: Any
    window: Any
    best: Any  # a training.loop.BestMetric, kept under its key

    def resume(self, resume: str) -> int:
        """Restore from `resume` (a path, "auto" or ""; see `resume_training`); the iteration to start at."""
        state = resume_training(
            resume, output_dir=self.output_dir, config=self.config, ctx=self.ctx, model=self.model,
            optimizer=self.optimizer, schedule=self.schedule, scaler=self.scaler, window=self.window,
        )  # fmt: skip
        if state is None:
            return 0
        self.best.value = state[self.best.key]
        return state["iteration"]

    def save(self, *, iteration: int, epoch: int, is_best: bool) -> None:
        """Write last.pt (and best.pt when `is_best`) after `iteration` iterations; every rank must call it."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "window": self.window.state_dict(),
            "iteration": iteration,
            "epoch": epoch,
            self.best.key: self.best.value,
            "rng": all_gather_objects(capture_rng_state(), self.ctx),  # every rank's own streams
            "config": self.config,
            "class_names": self.class_names,
        }
        if self.ctx.is_main:
            save_training_checkpoint(self.output_dir / "last.pt", state)
            if is_best:
                save_training_checkpoint(self.output_dir / "best.pt", state)
