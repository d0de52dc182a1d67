"""Loopback load test of the API: requests/s and p50/p99 latency at concurrency 1, 8 and 32.

    python -m bench.service                        # demo detector, bus.jpg, 10 s per point (about 3 minutes)
    python -m bench.service --duration 5 --detector my_detector.safetensors

Three servers, each in its own process on 127.0.0.1, same checkpoint, same inference settings:
  batching on   python -m service with MAX_BATCH=8, MAX_BATCH_WAIT_MS=5 (the defaults)
  batching off  python -m service with MAX_BATCH=1 (queue and worker thread, one image per forward)
  naive         bench/service_naive.py: the model run inside the route (the anchor of every ratio)
Each point runs `concurrency` clients that post the image back to back for `duration` seconds after
a warm-up; we count statuses (any 5xx but a deliberate 503 fails the run) and read the server's
resident memory before and after all the measured points. Client and server share the machine's cores.
"""

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_DETECTOR = REPO / "service" / "models" / "demo_detector.safetensors"
BUS = REPO.parent / "shared" / "data" / "demo-images" / "bus.jpg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stand_in_detector(folder: Path) -> Path:
    """Random weights, a narrow ResNet-18 FPN at 512 px: only for timing when no demo detector exists."""
    from detection import build_detector, save_detector

    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=3, base_width=32, min_size=(512,), max_size=683)
    return save_detector(
        folder / "stand_in_detector.safetensors", model=model, provenance={"note": "random, bench only"}
    )


class Server:
    """One server subprocess on a free loopback port, stopped on exit."""

    def __init__(self, name: str, module: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        environment = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **env}
        self.process = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=environment,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout} s")

    def batch_stats(self) -> tuple[float, float]:
        """(sum, count) of the detector's batch sizes so far, from /metrics; (0, 0) for the naive server."""
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        text = response.text if response.status_code == 200 else ""
        values = {}
        for line in text.splitlines():
            for key in ("resdet_batch_size_sum", "resdet_batch_size_count"):
                if line.startswith(key + '{model="detector"}'):
                    values[key] = float(line.rsplit(" ", 1)[1])
        return values.get("resdet_batch_size_sum", 0.0), values.get("resdet_batch_size_count", 0.0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load(url: str, image: bytes, *, concurrency: int, duration: float) -> tuple[list[float], dict[int, int]]:
    """`concurrency` clients posting back to back until `duration` passes; latencies of the 200s, status counts."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/detect", files={"file": ("bus.jpg", image, "image/jpeg")})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class Point:
    """One (server, concurrency) measurement."""

    server: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    refused_503: int
    other_5xx: int


def measure(server: Server, image: bytes, *, concurrency: int, duration: float) -> Point:
    batches_before = server.batch_stats()
    started = time.perf_counter()
    latencies, statuses = asyncio.run(load(server.url, image, concurrency=concurrency, duration=duration))
    elapsed = time.perf_counter() - started
    batches_after = server.batch_stats()
    batch_count = batches_after[1] - batches_before[1]
    print(f"  {server.name:34s} c={concurrency:<3d} statuses {statuses}", flush=True)
    return Point(
        server=server.name,
        concurrency=concurrency,
        requests_per_s=statuses.get(200, 0) / elapsed,
        p50_ms=percentile(latencies, 0.5) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        mean_batch=(batches_after[0] - batches_before[0]) / batch_count if batch_count else 1.0,
        refused_503=statuses.get(503, 0),
        other_5xx=sum(n for status, n in statuses.items() if status >= 500 and status != 503),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", type=Path, default=DEMO_DETECTOR)
    parser.add_argument("--image", type=Path, default=BUS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory(prefix="bench-service-")
    detector = args.detector
    if not detector.is_file():
        print(f"{detector} not found: timing a randomly initialised stand-in detector instead")
        detector = stand_in_detector(Path(scratch.name))
    if not args.image.is_file():
        raise SystemExit(f"image not found: {args.image} (pass --image)")
    image = args.image.read_bytes()
    common = {"DETECTOR_CHECKPOINT": str(detector), "CLASSIFIER_CHECKPOINT": "", "MAX_QUEUE": "64"}
    servers = {  # the naive anchor first
        "naive (model in the route)": ("bench.service_naive", {"DETECTOR_CHECKPOINT": str(detector)}),
        "batching off (MAX_BATCH=1)": ("service", {**common, "MAX_BATCH": "1"}),
        "batching on (MAX_BATCH=8, 5 ms)": ("service", {**common, "MAX_BATCH": "8", "MAX_BATCH_WAIT_MS": "5"}),
    }
    print(f"detector {detector.name}, image {args.image.name} ({len(image) // 1024} kB), {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.duration:g} s per point")  # fmt: skip

    points: list[Point] = []
    memory: dict[str, tuple[float, float]] = {}
    for name, (module, env) in servers.items():
        server = Server(name, module, env)
        try:
            server.wait_ready()
            asyncio.run(load(server.url, image, concurrency=max(args.concurrency), duration=args.warmup))
            rss_start = rss_mb(server.process.pid)
            for concurrency in args.concurrency:
                points.append(measure(server, image, concurrency=concurrency, duration=args.duration))
            memory[name] = (rss_start, rss_mb(server.process.pid))
        finally:
            server.stop()

    anchor = {point.concurrency: point.requests_per_s for point in points if point.server == next(iter(servers))}
    print("\n| server | concurrency | req/s | vs naive | p50 ms | p99 ms | mean batch | 503s | other 5xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for point in sorted(points, key=lambda point: (point.concurrency, list(servers).index(point.server))):
        ratio = point.requests_per_s / anchor[point.concurrency] if anchor.get(point.concurrency) else float("nan")
        cells = (point.server, point.concurrency, f"{point.requests_per_s:.2f}", f"{ratio:.2f}x", f"{point.p50_ms:.0f}",
                 f"{point.p99_ms:.0f}", f"{point.mean_batch:.1f}", point.refused_503, point.other_5xx)  # fmt: skip
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print("\nserver resident memory, after warm-up -> after the measured points:")
    for name, (start, end) in memory.items():
        print(f"  {name}: {start:.0f} -> {end:.0f} MB ({end - start:+.0f} MB)")
    scratch.cleanup()
    failures = [f"{point.server} at concurrency {point.concurrency}" for point in points if point.other_5xx]
    if failures:
        raise SystemExit("5xx other than 503: " + "; ".join(failures))


if __name__ == "__main__":
    main()
