"""Resident memory of the API around its largest legal requests: idle, peak per request, and after.

    python -m bench.service_memory              # demo models, one 6324 x 6324 PNG (40 M pixels = MAX_IMAGE_PIXELS)
    python -m bench.service_memory --side 2000  # a smaller image (seconds on a busy machine)

Starts `python -m service` on 127.0.0.1 (MALLOC_ARENA_MAX=2, as `make serve`), waits for /readyz, then
for each request resets the server's peak resident size (Linux: /proc/PID/clear_refs), sends it, and
reads the peak (VmHWM) and, a few seconds later, the resident size (VmRSS) it settles at. The goal
(issue 10): peak within 400 MB of idle for one request at MAX_IMAGE_PIXELS, and back down after.
"""

import argparse
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_mb(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {name} for pid {pid}")


def big_png(side: int, mode: str) -> bytes:
    """A side x side PNG with smooth content: it compresses to well under MAX_UPLOAD_BYTES."""
    gradient = Image.linear_gradient("L").resize((side, side))
    bands = (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient, gradient)
    image = Image.merge(mode, bands[: len(mode)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6324, help="image side in pixels (6324^2 = 40 M = the limit)")
    parser.add_argument("--mode", default="RGB", choices=("RGB", "RGBA", "L"), help="the PNG's colour mode")
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait before reading the resident size after")
    args = parser.parse_args()

    port = free_port()
    env = {**os.environ, "PORT": str(port), "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.2)
            data = big_png(args.side, args.mode)
            idle = status_mb(server.pid, "VmRSS")
            print(f"image {args.side}x{args.side} {args.mode} PNG, {len(data) / 1e6:.2f} MB; idle server {idle:.0f} MB")
            print(f"{'request':<28} {'status':>6} {'peak MB':>8} {'peak-idle':>9} {'after MB':>8}")
            one = [("file", ("big.png", data, "image/png"))]
            three = [("files", (f"{i}.png", data, "image/png")) for i in range(3)]
            requests = [
                ("POST /detect", "/detect", one),
                ("POST /classify", "/classify", one),
                ("POST /detect/annotated", "/detect/annotated", one),
                ("POST /detect/batch (3 files)", "/detect/batch", three),
            ]
            for name, path, files in requests:
                Path(f"/proc/{server.pid}/clear_refs").write_text("5")
                status = client.post(path, files=files).status_code
                peak = status_mb(server.pid, "VmHWM")
                time.sleep(args.settle_s)
                after = status_mb(server.pid, "VmRSS")
                print(f"{name:<28} {status:>6} {peak:>8.0f} {peak - idle:>9.0f} {after:>8.0f}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
