"""Loopback load test of the API: requests/s and p50/p99 latency at concurrency 1, 8 and 32.

    python -m bench.service                        # demo detector, bus.jpg (about 5 minutes)
    python -m bench.service --duration 5 --repeats 2 --detector my_detector.safetensors

Four servers, each in its own process on 127.0.0.1 on a port the kernel picks (`python -m bench.loopback`),
same checkpoint, same inference settings:
  naive         bench/service_naive.py: the model run inside the route (the anchor of every ratio)
  batching off  the app of python -m service, its access log too, with MAX_BATCH=1 (queue and worker
                thread, one image per forward)
  batching on   the same with MAX_BATCH=8, MAX_BATCH_WAIT_MS=5 (the defaults)
  overload      batching on with MAX_QUEUE=8, at the highest concurrency only: deliberate 503s
                (the load clients wait Retry-After before trying again)
All start and warm up first; then every (concurrency, server) point runs `duration` seconds
of `concurrency` clients posting the image back to back, round-robin over the servers and repeated,
so a busy neighbour on the machine slows them alike. We report the median requests/s over the
repeats and p50/p99 over all latencies, the p99 of a GET /healthz probe sent every 0.5 s beside the
load (a blocked event loop shows there), count statuses (any 5xx but a deliberate 503 fails the run)
and read each server's resident memory after warm-up and after every repeat. Client and servers
share the machine's cores.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from bench.loopback import SERVICE_APP, ServerProcess

REPO = Path(__file__).resolve().parents[1]
DEMO_DETECTOR = REPO / "service" / "models" / "demo_detector.safetensors"
BUS = REPO.parent / "shared" / "data" / "demo-images" / "bus.jpg"
NAIVE_APP = "bench.service_naive:app_from_environment"


def status_mb(pid: int, name: str) -> float:
    """A memory line of /proc/PID/status (Linux) in MB: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {name} for pid {pid}")


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")


def stand_in_detector(folder: Path) -> Path:
    """Random weights in the demo detector's shape (train_det.py's "synthetic" recipe: ResNet-18 FPN, 192 px).

    Only for timing when service/models/demo_detector.safetensors does not exist yet.
    """
    from detection import build_detector, save_detector

    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=3, frozen_bn=False, freeze_at=0,
                           min_size=(192,), max_size=192, anchor_sizes=(16, 32, 64, 128, 256))  # fmt: skip
    return save_detector(folder / "stand_in_detector.safetensors", model=model, provenance={"note": "random weights"})


class Server(ServerProcess):
    """A server under test (`bench.loopback.ServerProcess`), with the batch sizes its /metrics report."""

    def batch_stats(self) -> tuple[float, float]:
        """(sum, count) of the batch sizes so far, from /metrics; (0, 0) for the naive server. Summed over the
        `model` label (model names): these servers serve the detector alone."""
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        text = response.text if response.status_code == 200 else ""
        values: dict[str, float] = {}
        for line in text.splitlines():
            for key in ("resdet_batch_size_sum", "resdet_batch_size_count"):
                if line.startswith(key + "{"):
                    values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return values.get("resdet_batch_size_sum", 0.0), values.get("resdet_batch_size_count", 0.0)


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, requests answered 200
    statuses: dict[int, int]
    health_latencies: list[float]  # seconds, GET /healthz probes sent every 0.5 s during the load


async def load(url: str, image: bytes, *, concurrency: int, duration: float) -> LoadResult:
    """`concurrency` clients posting back to back until `duration` passes, and a /healthz prober beside them."""
    result = LoadResult(latencies=[], statuses={}, health_latencies=[])
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/detect", files={"file": ("bus.jpg", image, "image/jpeg")})
                result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    result.latencies.append(time.perf_counter() - started)
                elif response.status_code == 503:  # a polite client waits as told
                    await asyncio.sleep(float(response.headers.get("retry-after", 1)))

        async def prober() -> None:
            # An orchestrator's liveness probe: it only answers in time if the event loop is free.
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await client.get("/healthz")
                result.health_latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.5)

        await asyncio.gather(prober(), *(worker() for _ in range(concurrency)))
    return result


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
    mean_batch: float
    refused_503: int
    other_5xx: int
    latencies: list[float]
    health_latencies: list[float]


def measure(server: Server, image: bytes, *, concurrency: int, duration: float) -> Point:
    batches_before = server.batch_stats()
    started = time.perf_counter()
    result = asyncio.run(load(server.url, image, concurrency=concurrency, duration=duration))
    latencies, statuses = result.latencies, result.statuses
    elapsed = time.perf_counter() - started
    batches_after = server.batch_stats()
    batch_count = batches_after[1] - batches_before[1]
    print(f"  {server.name:34s} c={concurrency:<3d} statuses {statuses}", flush=True)
    return Point(
        server=server.name,
        concurrency=concurrency,
        requests_per_s=statuses.get(200, 0) / elapsed,
        mean_batch=(batches_after[0] - batches_before[0]) / batch_count if batch_count else 1.0,
        refused_503=statuses.get(503, 0),
        other_5xx=sum(n for status, n in statuses.items() if status >= 500 and status != 503),
        latencies=latencies,
        health_latencies=result.health_latencies,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", type=Path, default=DEMO_DETECTOR)
    parser.add_argument("--image", type=Path, default=BUS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured point")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all points")
    parser.add_argument("--bf16", choices=("auto", "true", "false"), default="auto",
                        help="BF16 for every server, the anchor included (the service's default: auto)")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load per server before measuring")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory(prefix="bench-service-")
    detector = args.detector
    if not detector.is_file():
        print(f"{detector} not found: timing a randomly initialised stand-in detector instead")
        detector = stand_in_detector(Path(scratch.name))
    if not args.image.is_file():
        raise SystemExit(f"image not found: {args.image} (pass --image)")
    image = args.image.read_bytes()
    common = {"DETECTOR_CHECKPOINT": str(detector), "CLASSIFIER_CHECKPOINT": "", "MAX_QUEUE": "64", "BF16": args.bf16}
    configs = {  # the naive anchor first
        "naive (model in the route)": (NAIVE_APP, {"DETECTOR_CHECKPOINT": str(detector), "BF16": args.bf16}),
        "batching off (MAX_BATCH=1)": (SERVICE_APP, {**common, "MAX_BATCH": "1"}),
        "batching on (MAX_BATCH=8, 5 ms)": (SERVICE_APP, {**common, "MAX_BATCH": "8", "MAX_BATCH_WAIT_MS": "5"}),
        # deliberate overload at the highest concurrency only: the queue refuses with 503 + Retry-After
        "batching on, MAX_QUEUE=8": (SERVICE_APP, {**common, "MAX_BATCH": "8", "MAX_QUEUE": "8", "MAX_FILES": "8"}),
    }
    overload_only = {"batching on, MAX_QUEUE=8"}
    print(f"detector {detector.name}, image {args.image.name} ({len(image) // 1024} kB), {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, BF16={args.bf16}, {args.repeats} x {args.duration:g} s per point")  # fmt: skip

    # The service logs every request as `python -m service` does; the naive anchor logs none, as before.
    servers = [
        Server(name=name, app=app, env=env, access_log=app == SERVICE_APP) for name, (app, env) in configs.items()
    ]
    points: list[Point] = []
    memory: dict[str, list[float]] = {}
    try:
        for server in servers:
            server.wait_ready()
            asyncio.run(load(server.url, image, concurrency=max(args.concurrency), duration=args.warmup))
            memory[server.name] = [rss_mb(server.process.pid)]
        for _ in range(args.repeats):
            for concurrency in args.concurrency:
                for server in servers:
                    if server.name in overload_only and concurrency != max(args.concurrency):
                        continue
                    points.append(measure(server, image, concurrency=concurrency, duration=args.duration))
            for server in servers:
                memory[server.name].append(rss_mb(server.process.pid))
    finally:
        for server in servers:
            server.stop()

    def summary(name: str, concurrency: int) -> dict:
        runs = [p for p in points if p.server == name and p.concurrency == concurrency]
        latencies = [latency for p in runs for latency in p.latencies]
        return {
            "requests_per_s": statistics.median(p.requests_per_s for p in runs),
            "p50": percentile(latencies, 0.5) * 1e3,
            "p99": percentile(latencies, 0.99) * 1e3,
            "health_p99": percentile([h for p in runs for h in p.health_latencies], 0.99) * 1e3,
            "mean_batch": statistics.mean(p.mean_batch for p in runs),
            "refused": sum(p.refused_503 for p in runs),
            "errors": sum(p.other_5xx for p in runs),
        }

    anchor_name = next(iter(configs))
    header = ("server", "concurrency", "req/s (median)", "vs naive", "p50 ms", "p99 ms", "/healthz p99 ms",
              "mean batch", "503s", "other 5xx")  # fmt: skip
    print("\n| " + " | ".join(header) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in args.concurrency:
        anchor = summary(anchor_name, concurrency)["requests_per_s"]
        for name in configs:
            if name in overload_only and concurrency != max(args.concurrency):
                continue
            row = summary(name, concurrency)
            ratio = row["requests_per_s"] / anchor if anchor else float("nan")
            cells = (name, concurrency, f"{row['requests_per_s']:.2f}", f"{ratio:.2f}x", f"{row['p50']:.0f}",
                     f"{row['p99']:.0f}", f"{row['health_p99']:.0f}", f"{row['mean_batch']:.1f}", row["refused"],
                     row["errors"])  # fmt: skip
            print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print("\nserver resident memory (MB) after warm-up, then after each round:")
    for name, samples in memory.items():
        print(f"  {name}: " + " -> ".join(f"{sample:.0f}" for sample in samples))
    scratch.cleanup()
    failures = [f"{point.server} at concurrency {point.concurrency}" for point in points if point.other_5xx]
    if failures:
        raise SystemExit("5xx other than 503: " + "; ".join(failures))


if __name__ == "__main__":
    main()
