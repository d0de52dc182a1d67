"""Resident memory of the API around its largest legal requests: idle, peak per request, and after.

    python -m bench.service_memory              # demo models, one 6324 x 6324 PNG (40 M pixels = MAX_IMAGE_PIXELS)
    python -m bench.service_memory --side 2000  # a smaller image (seconds on a busy machine)

Starts the app of `python -m service` on 127.0.0.1 (`python -m bench.loopback`, MALLOC_ARENA_MAX=2 as
`make serve`), waits for /readyz, then for each request resets the server's peak resident size (Linux:
/proc/PID/clear_refs), sends it, and reads the peak (VmHWM) and, a few seconds later, the resident size
(VmRSS) it settles at. The goal (issue 10): peak within 400 MB of idle for one request at MAX_IMAGE_PIXELS,
and back down after.
"""

import argparse
import io
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.loopback import ServerProcess
from bench.service import status_mb


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

    server = ServerProcess(name="service", access_log=True)  # the app and access log of python -m service
    try:
        base = server.wait_ready(timeout=300)
        pid = server.process.pid
        with httpx.Client(base_url=base, timeout=600) as client:
            data = big_png(args.side, args.mode)
            idle = status_mb(pid, "VmRSS")
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
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                status = client.post(path, files=files).status_code
                peak = status_mb(pid, "VmHWM")
                time.sleep(args.settle_s)
                after = status_mb(pid, "VmRSS")
                print(f"{name:<28} {status:>6} {peak:>8.0f} {peak - idle:>9.0f} {after:>8.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
