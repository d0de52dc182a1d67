"""--amp auto: bf16 where the processor computes it natively, fp32 elsewhere (fake /proc/cpuinfo)."""

import pytest
import torch

from backbone.devices import cpu_flags, native_bf16
from training.precision import Precision

CPU = torch.device("cpu")
ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16 amx_int8\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [(ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"), (SKYLAKE, "none"),
                                                   (GRAVITON, "none"), ("", "none")])  # fmt: skip
def test_auto_picks_bf16_only_on_native_bf16_cpus(tmp_path, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    precision = Precision(amp="auto", device=CPU, cpuinfo=path)
    assert precision.mode == expected
    assert (precision.dtype is torch.bfloat16) == (expected == "bf16")
    assert not precision.scaler.is_enabled()  # bf16 has fp32's range: never a GradScaler


def test_flags_are_read_from_the_flags_line_only(tmp_path):
    # "amx_bf16" in a model name or bug list must not count: only the flags line does
    assert cpu_flags("model name\t: amx_bf16 box\nbugs\t\t: avx512_bf16\nflags\t\t: sse2\n") == {"sse2"}
    assert native_bf16(CPU, cpuinfo=tmp_path / "missing") is False  # unreadable: fp32, no crash


def test_explicit_modes_ignore_the_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(SKYLAKE)
    assert Precision(amp="bf16", device=CPU, cpuinfo=path).mode == "bf16"
    path.write_text(ZEN4)
    assert Precision(amp="none", device=CPU, cpuinfo=path).autocast().__class__.__name__ == "nullcontext"
    with pytest.raises(ValueError, match="amp must be one of"):
        Precision(amp="bfloat16", device=CPU)


def test_autocast_under_auto_runs_matmuls_in_bf16_on_a_native_cpu(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4)
    with Precision(amp="auto", device=CPU, cpuinfo=path).autocast():
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype is torch.bfloat16
