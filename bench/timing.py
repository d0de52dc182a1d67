"""Timing helpers shared by the training benches: device synchronisation, round-robin timing, the ratio table."""

import contextlib
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def synchronize(device: torch.device | None) -> None:
    """Wait for queued GPU work: CUDA calls return before the kernels finish, so timing needs this."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(variants: dict[str, Callable[[], object]], *, seconds: float, warmup: int = 1,
                     min_repeats: int = 3, device: torch.device | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Run each variant `warmup` times, then one step of each in turn until `seconds` have passed and each
    ran `min_repeats` times; per-step seconds of each variant, synchronised with the device."""
    for step in variants.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < min_repeats or time.perf_counter() - start < seconds:
        for name, step in variants.items():
            begin = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - begin)
    return times


def ratio_table(times: dict[str, list[float]], *, batch_size: int, reference: str, goal: float) -> list[dict]:
    """Print s/step, img/s, the ratio to the first row (the anchor) and to the fastest fp32 row whose name
    starts with `reference` (the anchor model at its best fp32 settings); return the rows as dicts."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    anchor = next(iter(medians.values()))
    best_name = min((n for n in medians if n.startswith(reference) and "fp32" in n), key=medians.get)
    best = medians[best_name]
    width = max(len(name) for name in medians)
    print(f"{'variant':<{width}} {'s/step':>8} {'img/s':>9} {'vs anchor':>10} {'vs best ref fp32':>17} {'steps':>6}")
    rows = []
    for name, seconds in medians.items():
        row = {"variant": name, "seconds_per_step": seconds, "images_per_s": batch_size / seconds,
               "vs_anchor": anchor / seconds, "vs_best_reference_fp32": best / seconds,
               "steps": len(times[name])}  # fmt: skip
        rows.append(row)
        print(f"{name:<{width}} {seconds:8.4f} {row['images_per_s']:9.2f} {row['vs_anchor']:9.2f}x "
              f"{row['vs_best_reference_fp32']:16.2f}x {row['steps']:6d}")  # fmt: skip
    print(f"best {reference} fp32 row: {best_name}; goal: ours in bf16 >= {goal}x it")
    return rows
