"""What a benchmark prints about the machine it ran on: the CPU's model and bf16/int8 features, the load average.

Timings on a shared machine are honest only with these beside them (the machines here change between AMD
EPYC and Intel Xeon with AMX, where oneDNN and OpenVINO use AMX for bf16 and int8).
"""

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flag -> the name lscpu and the vendors' documents use
FEATURES = {"avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


def _cpuinfo_field(name: str) -> str | None:
    if not CPUINFO.is_file():
        return None
    for line in CPUINFO.read_text().splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """lscpu's 'Model name' (from /proc/cpuinfo), else what the platform module says."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_features() -> str:
    """Which of AVX512-BF16, AVX512-VNNI and AMX the CPU reports, each named with yes or no."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for flag, name in FEATURES.items())


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def describe() -> str:
    """One line: model, logical CPUs, features, load average."""
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs ({cpu_features()}), load average {load_average()}"
