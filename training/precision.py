"""Mixed precision: which autocast dtype and whether a GradScaler is needed, from one `amp` setting."""

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path

import torch

AMP_MODES = ("auto", "none", "bf16", "fp16")
CPUINFO = Path("/proc/cpuinfo")
# x86 flags of bf16 arithmetic in hardware: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake+) and AMX (Intel
# Sapphire Rapids+). Without them oneDNN emulates bf16 and autocast is slower than fp32.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The processor's feature flags from the text of /proc/cpuinfo (empty when it has no flags line)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says "flags", ARM "Features"
            return set(value.split())
    return set()


def native_bf16(device: torch.device, *, cpuinfo: Path = CPUINFO) -> bool:
    """Whether `device` computes bf16 in hardware: CUDA with bf16 support, or a CPU with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no way to tell, so the safe choice
        return False
    return bool(cpu_flags(text) & NATIVE_BF16_CPU_FLAGS)


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
