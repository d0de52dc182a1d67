"""The torch device a command runs on, from a user's setting ("auto", "cpu", "cuda", "cuda:1", ...), and
whether it computes bfloat16 in hardware."""

from pathlib import Path

import torch

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


def resolve_device(choice: str, *, setting: str, error: type[Exception] = ValueError) -> torch.device:
    """The choice "auto" is CUDA when torch sees it, else the CPU; anything else must name a device that exists here.

    `setting` is how the user gave the choice ("--device ", "DEVICE="), so that a bad one is named in
    their own words; `error` is the exception type the command reports user errors with.
    """
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as cause:
        raise error(f"{setting}{choice!r} is not a torch device: {cause}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{setting}{choice!r} but torch sees no CUDA device (use {setting}cpu or auto)")
    return device
