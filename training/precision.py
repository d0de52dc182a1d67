"""Mixed precision: which autocast dtype and whether a GradScaler is needed, from one `amp` setting."""

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from backbone.devices import CPUINFO, native_bf16

AMP_MODES = ("auto", "none", "bf16", "fp16")


def flush_denormals(device: torch.device) -> None:
    """Treat subnormal floats as zero in this process's CPU arithmetic (x86 FTZ/DAZ; GPUs need nothing).

    Why: from scratch, some weights and gradients decay towards zero, and CPU arithmetic on subnormal
    values takes a slow path. `python -m bench.denormals` (same weights and batches in one run, identical
    losses): 1.15x faster per step at 2 threads, 1.03x at 1 thread with channels_last. A first coco-mini
    run without it drifted from 10 to 50 s/iteration while the same command with it held 10 s, but those
    two ran at different times beside another job and the bench does not reproduce a gap that large.
    Values below 1.2e-38 cannot change a detector's output.
    """
    if device.type == "cpu":
        torch.set_flush_denormal(True)


class Precision:
    """`amp`: "auto", "none", "bf16" or "fp16" (with a GradScaler, CUDA only).

    "auto" is bf16 where the device computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX:
    `python -m bench.train_det` measures the step on this CPU) and fp32 elsewhere. `cpuinfo` is read on
    CPU only; tests pass a fake one.
    """

    def __init__(self, *, amp: str, device: torch.device, cpuinfo: Path = CPUINFO) -> None:
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
        if amp == "auto":
            amp = "bf16" if native_bf16(device, cpuinfo=cpuinfo) else "none"
        if amp == "fp16" and device.type != "cuda":
            raise ValueError("amp 'fp16' needs CUDA; use 'bf16' or 'none' on CPU")
        self.mode = amp
        self.device_type = device.type
        self.dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)
