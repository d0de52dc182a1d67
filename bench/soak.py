"""Soak test: good requests beside hostile ones, at concurrency 16, against one server on loopback.

    python -m bench.soak                                    # starts the server itself (demo models), 5 minutes
    python -m bench.soak --duration 30                      # a short check
    python -m bench.soak --url http://127.0.0.1:8000 --pid PID    # a running server (`make serve`)

Goal (issue 10): no 5xx but deliberate 503s (queue full, with Retry-After); the good requests' p99 with
the hostile traffic within 1.5x of their p99 without it, in the same run; the server's resident memory
flat (at the end, after `--settle` idle seconds, within 10% or 100 MB of its level after warm-up).

The run alternates segments of `--segment` seconds until `--duration` is spent, all at concurrency
`--good-clients` + `--hostile-clients` (8 + 8). In "clean" segments every client is a good one,
posting a real photo to /detect or /classify back to back; in "mixed" ones the hostile clients send,
beside the good ones, extreme aspect ratios, huge legal PNGs, a decompression-bomb header, garbage and
truncated bytes, wrong content types, bodies over the upload limit, uploads abandoned half way, random
HTTP methods and paths, floods of 32 small requests and 4-photo batches. Comparing the good p99 of the
two kinds of segment tells what hostile requests cost the good ones against as many good requests in
their places; alternating puts a busy neighbour on the machine into both. It prints requests/s and
p50/p99 of the good requests per kind of segment and their ratio, statuses by class for the good
requests and for each hostile kind, and the server's VmRSS (/proc/PID/status) sampled every second.
Everything stays on 127.0.0.1; the run is bounded by `--duration` (plus the server's start and a
warm-up) and every request by a timeout. Exit status 1 when a goal is missed.
"""

import argparse
import asyncio
import io
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from PIL import Image

from bench.loopback import ServerProcess, wait_ready
from bench.service import percentile, rss_mb

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "demo-images" / "bus.jpg"
REQUEST_TIMEOUT_S = 120
P99_GOAL = 1.5


def png(size: tuple[int, int], *, noise: bool = False, mode: str = "RGB") -> bytes:
    image = Image.effect_noise(size, 60).convert(mode) if noise else Image.new(mode, size, 90)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def good_photo() -> tuple[str, bytes]:
    """bus.jpg from ../shared when present, else a generated 640x480 JPEG with structure in it."""
    if PHOTO.is_file():
        return "bus.jpg", PHOTO.read_bytes()
    image = Image.effect_mandelbrot((640, 480), (-2.0, -1.2, 1.0, 1.2), 100).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "generated.jpg", buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG declaring width x height with almost no pixel data: refused from its header (413)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@dataclass
class Hostile:
    """The hostile payloads, built once."""

    huge_pixels: int
    max_upload_bytes: int
    rng: random.Random
    files: dict[str, bytes] = field(default_factory=dict)
    photo: bytes = b""

    def __post_init__(self) -> None:
        side = int(self.huge_pixels**0.5)
        photo = self.photo = good_photo()[1]
        self.files = {
            "ratio 4000x8": png((4000, 8)),
            "ratio 129x1": png((129, 1)),
            "ratio 8x4000": png((8, 4000), noise=True),
            f"strip 1x{self.huge_pixels}": png((1, self.huge_pixels)),
            f"huge {side}x{side}": png((side, side)),
            "bomb 50000x50000": bomb_png(50_000, 50_000),
            "truncated photo": photo[: len(photo) // 3],
            "garbage bytes": self.rng.randbytes(64 * 1024),
            "16-bit grey": png((300, 200), noise=True, mode="I;16"),
        }


class Tally:
    """Statuses by kind of request and latencies of the good ones, per kind of segment."""

    def __init__(self) -> None:
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.good_latencies: dict[str, list[float]] = defaultdict(list)
        self.good_seconds: dict[str, float] = defaultdict(float)

    def count(self, kind: str, status: int | str) -> None:
        self.statuses[kind][status] += 1


def status_class(status: int | str) -> str:
    if isinstance(status, str):
        return status  # a transport error, named
    return "503" if status == 503 else f"{status // 100}xx"


async def good_client(
    client: httpx.AsyncClient, photo: tuple[str, bytes], tally: Tally, segment: str, deadline: float, seed: int
) -> None:
    rng = random.Random(seed)
    name, data = photo
    while time.perf_counter() < deadline:
        path = rng.choice(["/detect", "/classify"])
        started = time.perf_counter()
        try:
            response = await client.post(path, files={"file": (name, data, "image/jpeg")})
        except httpx.HTTPError as error:
            tally.count("good", type(error).__name__)
            continue
        tally.count("good", response.status_code)
        if response.status_code == 200:
            tally.good_latencies[segment].append(time.perf_counter() - started)
        elif response.status_code == 503:  # a polite client waits as told
            await asyncio.sleep(float(response.headers.get("retry-after", 1)))


async def raw_exchange(url: str, request: bytes, *, then_close: bool) -> int | str:
    """Send raw bytes on a fresh connection; the status of the answer, or 'closed' if none came."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(request)
        await writer.drain()
        if then_close:  # an upload abandoned half way
            return "abandoned"
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else "closed"
    finally:
        writer.close()


async def hostile_request(
    client: httpx.AsyncClient, url: str, hostile: Hostile, rng: random.Random, tally: Tally
) -> None:
    kind = rng.choice(
        [
            *hostile.files,
            "wrong content type",
            "oversized body",
            "abandoned upload",
            "random method",
            "random path",
            "flood",
            "batch of files",
        ]
    )
    path = rng.choice(["/detect", "/classify", "/detect/batch", "/classify/batch", "/detect/annotated"])
    form_field = "files" if path.endswith("/batch") else "file"
    try:
        if kind in hostile.files:
            response = await client.post(path, files={form_field: ("x.png", hostile.files[kind], "image/png")})
            status = response.status_code
        elif kind == "wrong content type":
            response = await client.post(path, files={form_field: ("page.html", b"<html>hi</html>", "text/html")})
            status = response.status_code
        elif kind == "oversized body":
            body = b"\0" * (hostile.max_upload_bytes + 1)
            status = (await client.post(path, files={form_field: ("big.png", body, "image/png")})).status_code
        elif kind == "abandoned upload":
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 100000\r\n\r\n--b\r\n"
            )
            status = await raw_exchange(url, head.encode() + hostile.rng.randbytes(2000), then_close=True)
        elif kind == "random method":
            method = "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=rng.randint(3, 1024)))
            status = await raw_exchange(url, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), then_close=False)
        elif kind == "random path":
            junk = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789/%.-", k=rng.randint(1, 200)))
            status = (await client.get(f"/{junk}")).status_code
        elif kind == "flood":
            flood = [client.post(path, files={form_field: ("x", b"\x89PNG", "image/png")}) for _ in range(32)]
            answers = await asyncio.gather(*flood, return_exceptions=True)
            for answer in answers[1:]:
                tally.count(
                    f"hostile: {kind}",
                    answer.status_code if isinstance(answer, httpx.Response) else type(answer).__name__,
                )
            status = answers[0].status_code if isinstance(answers[0], httpx.Response) else type(answers[0]).__name__
        else:  # a batch form: four photos in one request, a bigger share of the queue at once
            batch_path = rng.choice(["/detect/batch", "/classify/batch"])
            response = await client.post(batch_path, files=[("files", ("p.jpg", hostile.photo, "image/jpeg"))] * 4)
            status = response.status_code
    except (httpx.HTTPError, OSError, asyncio.TimeoutError) as error:
        status = type(error).__name__
    tally.count(f"hostile: {kind}", status)


async def hostile_client(
    client: httpx.AsyncClient, url: str, hostile: Hostile, tally: Tally, deadline: float, seed: int
) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        await hostile_request(client, url, hostile, rng, tally)


def connection_pool(url: str, connections: int) -> httpx.AsyncClient:
    # Pooled connections expire before uvicorn's 5 s keep-alive does: reusing one the server is closing
    # would count as a transport error that is the client's doing.
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0)
    return httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits)


async def run_segment(
    url: str, *, segment: str, seconds: float, good_clients: int, hostile_clients: int,
    photo: tuple[str, bytes], hostile: Hostile, tally: Tally, seed: int,
) -> None:  # fmt: skip
    """Mixed: good and hostile clients (each kind its own connection pool). Otherwise good clients take
    the hostile ones' places too: the same concurrency, so the good p99s compare what the hostile
    requests cost against as many good ones."""
    if segment != "mixed":
        good_clients, hostile_clients = good_clients + hostile_clients, 0
    async with connection_pool(url, good_clients) as good, connection_pool(url, max(1, hostile_clients) * 32) as bad:
        started = time.perf_counter()
        deadline = started + seconds
        tasks = [good_client(good, photo, tally, segment, deadline, seed + i) for i in range(good_clients)]
        if hostile_clients:
            tasks += [
                hostile_client(bad, url, hostile, tally, deadline, seed + 1000 + i) for i in range(hostile_clients)
            ]
        await asyncio.gather(*tasks)
        tally.good_seconds[segment] += time.perf_counter() - started


class MemorySampler:
    """VmRSS of one process every `interval` seconds, in a background thread."""

    def __init__(self, pid: int | None, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter() - started, rss_mb(self.pid)))
            except (OSError, RuntimeError):  # the process is gone
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def report(tally: Tally, memory: list[tuple[float, float]], *, rss_after_warmup: float | None) -> list[str]:
    """Print the tables; return the goals missed."""
    missed = []
    print("\n| good requests | requests/s | p50 ms | p99 ms | answered 200 |")
    print("|---|---:|---:|---:|---:|")
    p99 = {}
    for segment in ("clean", "mixed"):
        latencies = tally.good_latencies[segment]
        seconds = tally.good_seconds[segment] or float("nan")
        p99[segment] = percentile(latencies, 0.99)
        print(
            f"| {segment} | {len(latencies) / seconds:.2f} | {percentile(latencies, 0.5) * 1e3:.0f} | "
            f"{p99[segment] * 1e3:.0f} | {len(latencies)} |"
        )
    ratio = p99["mixed"] / p99["clean"] if p99["clean"] else float("nan")
    print(f"\ngood p99 with hostile traffic / without: {ratio:.2f}x (goal <= {P99_GOAL}x)")
    if not ratio <= P99_GOAL:
        missed.append(f"good p99 ratio {ratio:.2f}x > {P99_GOAL}x")

    print("\n| requests | 2xx | 4xx | 503 | other 5xx | transport errors | statuses |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for kind in sorted(tally.statuses, key=lambda kind: (kind != "good", kind)):
        statuses = tally.statuses[kind]
        classes = Counter()
        for status, n in statuses.items():
            classes[status_class(status)] += n
        other_5xx = classes["5xx"]
        transport = sum(n for name, n in classes.items() if name not in ("2xx", "3xx", "4xx", "503", "5xx"))
        detail = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=str))
        print(
            f"| {kind} | {classes['2xx']} | {classes['4xx']} | {classes['503']} | {other_5xx} | {transport} | "
            f"{detail} |"
        )
        if other_5xx:
            missed.append(f"{other_5xx} x 5xx (not 503) for {kind}")
        if kind == "good" and transport:
            missed.append(f"{transport} good requests failed in transport")

    if memory:
        start = rss_after_warmup if rss_after_warmup is not None else memory[0][1]
        peak, end = max(mb for _, mb in memory), memory[-1][1]
        step = max(1, len(memory) // 10)
        trail = " ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in memory[::step])
        print(
            f"\nserver VmRSS MB: after warm-up {start:.0f}, peak {peak:.0f}, end {end:.0f} "
            f"(end - start {end - start:+.0f})\n  over time: {trail}"
        )
        # "Flat": the end is back within 10% (at least 100 MB) of where it started.
        if end - start > max(100.0, 0.1 * start):
            missed.append(f"memory grew {end - start:+.0f} MB")
    else:
        print("\nserver memory not sampled (pass --pid for a server this run did not start)")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (loopback); default: start one (python -m bench.loopback)")
    parser.add_argument("--pid", type=int, help="the running server's process id, for its memory (with --url)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load in all (default 300)")
    parser.add_argument("--segment", type=float, default=30.0, help="seconds per clean or mixed segment")
    parser.add_argument("--good-clients", type=int, default=8)
    parser.add_argument("--hostile-clients", type=int, default=8, help="beside the good ones in mixed segments")
    parser.add_argument(
        "--huge-pixels",
        type=int,
        default=36_000_000,
        help="pixels of the huge legal PNGs (a square and a 1-px strip); under MAX_IMAGE_PIXELS",
    )
    parser.add_argument("--max-upload-bytes", type=int, default=20 * 1024 * 1024, help="the server's limit")
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before the last memory sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address: this tool sends hostile traffic")
    photo = good_photo()
    hostile = Hostile(
        huge_pixels=args.huge_pixels, max_upload_bytes=args.max_upload_bytes, rng=random.Random(args.seed)
    )
    server = None if args.url else ServerProcess(name="service", env={"MAX_UPLOAD_BYTES": str(args.max_upload_bytes)})
    tally = Tally()
    try:
        if server is None:
            url, pid = args.url, args.pid
            wait_ready(url, timeout=300)
        else:
            url, pid = server.wait_ready(timeout=300), server.process.pid
        asyncio.run(
            run_segment(
                url,
                segment="warm-up",
                seconds=min(10.0, args.segment),
                good_clients=args.good_clients,
                hostile_clients=args.hostile_clients,
                photo=photo,
                hostile=hostile,
                tally=Tally(),
                seed=args.seed,
            )
        )
        rss_after_warmup = rss_mb(pid) if pid else None
        # At least one clean and one mixed segment, whatever the duration.
        segment_s = min(args.segment, args.duration / 2)
        print(
            f"{url}: concurrency {args.good_clients + args.hostile_clients}: clean segments all good, mixed "
            f"{args.good_clients} good + {args.hostile_clients} hostile; {args.duration:g} s in "
            f"{segment_s:g} s segments, good image {photo[0]}, {os.cpu_count()} CPUs",
            flush=True,
        )
        with MemorySampler(pid) as sampler:
            spent, index = 0.0, 0
            while spent < args.duration or index % 2:
                segment = ("clean", "mixed")[index % 2]
                seconds = segment_s
                asyncio.run(
                    run_segment(
                        url,
                        segment=segment,
                        seconds=seconds,
                        good_clients=args.good_clients,
                        hostile_clients=args.hostile_clients,
                        photo=photo,
                        hostile=hostile,
                        tally=tally,
                        seed=args.seed + 100 * index,
                    )
                )
                print(
                    f"  {segment} segment {index + 1}: {sum(tally.statuses['good'].values())} good so far", flush=True
                )
                spent, index = spent + seconds, index + 1
            if pid:
                # Memory after the load: the spike must come back down while the server idles.
                time.sleep(args.settle)
        missed = report(tally, sampler.samples, rss_after_warmup=rss_after_warmup)
    finally:
        if server is not None:
            server.stop()
    print("\ngoals met" if not missed else "\ngoals missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
