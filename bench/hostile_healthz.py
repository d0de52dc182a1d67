"""While each class of hostile upload is being processed, how long does /healthz take? (issue 24)

    python -m bench.hostile_healthz                 # starts the server itself (demo models) on loopback
    python -m bench.hostile_healthz --classes jpeg-markers,tiff-strips

Each attack is sent alone while /healthz is asked every 20 ms until the attack's answer is back; it prints
the attack's status and time and the worst /healthz latency during it (goal: under 100 ms), with the CPU
and the load average. Exit status 1 when a class misses the goal. Everything stays on 127.0.0.1.
"""

import argparse
import io
import os
import struct
import threading
import time
import zlib

import httpx
from PIL import Image

from bench.decode_isolation import cpu_name
from bench.loopback import LoopbackServer, wait_ready
from service import Settings, create_app
from service.settings import DEMO_MODEL_DIR

GOAL_MS = 100.0
UPLOAD_BYTES = 16 * 1024 * 1024  # what the slow-to-walk attacks fill (under the default MAX_UPLOAD_BYTES)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, *, extra: bytes = b"", pixels: bool = True) -> bytes:
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = _chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * width))) if pixels else b""
    return b"\x89PNG\r\n\x1a\n" + header + extra + data + _chunk(b"IEND", b"")


def jpeg_markers() -> bytes:
    """A tiny JPEG behind 16 MB of empty comment segments: a header of four million markers to walk."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * (UPLOAD_BYTES // 4) + data[2:]


def png_chunks() -> bytes:
    """A 1x1 PNG with a million tiny text chunks before its pixels."""
    text = _chunk(b"tEXt", b"k\x00v")
    return _png(1, 1, extra=text * (UPLOAD_BYTES // len(text)))


def gif_sub_blocks() -> bytes:
    """A 1x1 GIF whose comment extension is eight million one-byte sub-blocks."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    comment = b"\x21\xfe" + b"\x01x" * (UPLOAD_BYTES // 2) + b"\x00"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + comment + image + b"\x3b"


def tiff_strips() -> bytes:
    """A 1-pixel-wide, 500,000-row greyscale TIFF of one row per strip: half a million strip offsets to read."""
    buffer = io.BytesIO()
    Image.new("L", (1, 500_000)).save(buffer, format="TIFF", tiffinfo={278: 1})
    return buffer.getvalue()


def ico_of_a_huge_png() -> bytes:
    """An ICO whose one entry says 256x256 and holds a PNG declaring 13000x13000."""
    png = _png(13000, 13000, pixels=False)
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def bomb_header() -> bytes:
    """A PNG declaring 100000x100000 pixels (no pixel data)."""
    return _png(100_000, 100_000, pixels=False)


def large_legal_png() -> bytes:
    """A 4000x3000 PNG of one colour: small to send, 12 M pixels to decode (the large-image worker)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


ATTACKS = {
    "jpeg-markers": jpeg_markers,
    "png-chunks": png_chunks,
    "gif-sub-blocks": gif_sub_blocks,
    "tiff-strips": tiff_strips,
    "ico-huge-png": ico_of_a_huge_png,
    "bomb-header": bomb_header,
    "large-legal-png": large_legal_png,
}


def worst_healthz_during(url: str, data: bytes, name: str) -> tuple[int, float, float]:
    """(the attack's status, its seconds, the worst /healthz latency in ms while it was being processed)."""
    answer: dict = {}

    def attack() -> None:
        files = {"file": (name, data, "application/octet-stream")}
        answer["status"] = httpx.post(f"{url}/detect", files=files, timeout=120).status_code

    worst = 0.0
    with httpx.Client(timeout=30) as client:
        sender = threading.Thread(target=attack)
        started = time.perf_counter()
        sender.start()
        while sender.is_alive():
            asked = time.perf_counter()
            client.get(f"{url}/healthz")
            worst = max(worst, (time.perf_counter() - asked) * 1e3)
            time.sleep(0.02)
        sender.join()
    return answer.get("status", 0), time.perf_counter() - started, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default=",".join(ATTACKS), help=f"comma-separated, of: {', '.join(ATTACKS)}")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.classes.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attack class {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
    settings = Settings(detector_checkpoint=DEMO_MODEL_DIR / "demo_detector.safetensors", classifier_checkpoint=None)
    missed = []
    with LoopbackServer(create_app(settings)) as server:
        wait_ready(server.url)
        print(
            f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        )
        print(f"{'attack':18} {'bytes':>10} {'status':>6} {'seconds':>8} {'worst /healthz ms':>18}")
        for name in names:
            data = ATTACKS[name]()
            status, seconds, worst = worst_healthz_during(server.url, data, name)
            print(f"{name:18} {len(data):>10} {status:>6} {seconds:>8.2f} {worst:>18.1f}")
            if worst >= GOAL_MS:
                missed.append(name)
    print(f"goal: every worst /healthz under {GOAL_MS:g} ms; missed by: {', '.join(missed) or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
