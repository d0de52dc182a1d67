"""What decoding uploads in killable processes costs a normal upload: the service's decode (header and pixels in
the decoding processes, the array sent back) against the same decode in a thread of the server, as before.

    python -m bench.decode_isolation                 # a 640x480 JPEG photo-like image, 200 decodes each way
    python -m bench.decode_isolation --size 1920x1080 --repeats 100

Goal (issue 24): the added median at most 10 ms. Both ways run in the same run, alternating, one at a time;
it prints both medians, the difference and the ratio, with the CPU and the load average beside them.
"""

import argparse
import asyncio
import io
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from detection.decoding import decode_image
from service.settings import Settings
from service.uploads import UploadDecoders

GOAL_MS = 10.0


def photo_like_jpeg(width: int, height: int) -> bytes:
    """Smooth gradients plus noise, at quality 90: compresses and decodes like a photograph."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


async def measure(data: bytes, repeats: int) -> tuple[list[float], list[float]]:
    settings = Settings()
    decoders = UploadDecoders(settings)
    await decoders.start()
    in_thread, in_process = [], []
    try:
        for _ in range(5):  # warm both ways up (first imports, first forks)
            await decoders.decode(data, label="warm-up")
            await asyncio.to_thread(decode_image, data, max_pixels=settings.max_image_pixels)
        for _ in range(repeats):
            started = time.perf_counter()
            await asyncio.to_thread(decode_image, data, max_pixels=settings.max_image_pixels, label="bench")
            in_thread.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            await decoders.decode(data, label="bench")
            in_process.append((time.perf_counter() - started) * 1e3)
    finally:
        await decoders.stop()
    return in_thread, in_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the JPEG (default 640x480)")
    parser.add_argument("--repeats", type=int, default=200, help="decodes each way (default 200)")
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.size.lower().split("x"))
    data = photo_like_jpeg(width, height)
    in_thread, in_process = asyncio.run(measure(data, args.repeats))
    thread_ms, process_ms = statistics.median(in_thread), statistics.median(in_process)
    added = process_ms - thread_ms
    print(f"{width}x{height} JPEG, {len(data)} bytes, {args.repeats} decodes each way")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"median in a thread (before): {thread_ms:.2f} ms")
    print(f"median in the decoding processes (now): {process_ms:.2f} ms")
    print(f"added: {added:.2f} ms (goal <= {GOAL_MS:g} ms), ratio {process_ms / thread_ms:.2f}x")
    return 0 if added <= GOAL_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
