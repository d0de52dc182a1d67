"""Upload decoding (detection.decoding, the one decoder): every image mode the API promises, EXIF orientation,
and hostile files refused early with the right HTTP status."""

import functools
import io
import struct

import pytest
from helpers import (
    encode,
    hostile_files,
    psd,
)
from PIL import Image, ImageFile

from detection.decoding import ImageDecodeError, decode_image
from service.images import DECODE_STATUS, ImageRejected, check_content_type

MAX_PIXELS = 40_000_000


# ---------------------------------------------------------------------------------------- modes


@functools.cache
def mode_images() -> dict[str, tuple[bytes, tuple[int, int], tuple[int, int, int]]]:
    """name -> (encoded file, expected size, expected RGB of pixel (0, 0))."""
    palette = Image.new("P", (9, 7), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    sixteen = Image.new("I;16", (5, 4), 65535)
    sixteen.putpixel((0, 0), 257 * 100)
    rgba = Image.new("RGBA", (6, 6), (255, 0, 0, 0))  # fully transparent red: composited on white
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 200, 0), (200, 0, 0))]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {
        "grey": (encode(Image.new("L", (10, 8), 77), "PNG"), (10, 8), (77, 77, 77)),
        "grey+alpha": (encode(Image.new("LA", (10, 8), (77, 255)), "PNG"), (10, 8), (77, 77, 77)),
        "bilevel": (encode(Image.new("1", (10, 8), 1), "PNG"), (10, 8), (255, 255, 255)),
        "rgba": (encode(rgba, "PNG"), (6, 6), (255, 255, 255)),
        "palette": (encode(palette, "PNG"), (9, 7), (0, 0, 255)),
        "palette+transparency": (encode(transparent, "PNG"), (9, 7), (255, 255, 255)),
        "cmyk": (encode(Image.new("CMYK", (12, 12), (0, 0, 0, 0)), "JPEG", quality=100), (12, 12), (255, 255, 255)),
        "16-bit": (encode(sixteen, "PNG"), (5, 4), (100, 100, 100)),
        "animated gif (first frame)": (animated.getvalue(), (8, 8), (0, 200, 0)),
        "webp": (encode(Image.new("RGB", (16, 16), (0, 0, 250)), "WEBP", lossless=True), (16, 16), (0, 0, 250)),
        "bmp": (encode(Image.new("RGB", (7, 3), (1, 2, 3)), "BMP"), (7, 3), (1, 2, 3)),
        "tiff": (encode(Image.new("RGB", (7, 3), (4, 5, 6)), "TIFF"), (7, 3), (4, 5, 6)),
        "1x1": (encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"), (1, 1), (9, 8, 7)),
    }


@pytest.mark.parametrize("name", list(mode_images()))
def test_every_promised_mode_decodes_to_rgb(name):
    data, size, first_pixel = mode_images()[name]
    image = decode_image(data, max_pixels=MAX_PIXELS, label=name).to_pil()
    assert image.mode == "RGB" and image.size == size
    got = image.getpixel((0, 0))
    assert max(abs(a - b) for a, b in zip(got, first_pixel)) <= 2, (name, got, first_pixel)


def test_exif_orientation_is_applied():
    # 60 wide, 40 high, red marker at the stored top-left; Orientation 6 = display rotated 90 degrees clockwise.
    stored = Image.new("RGB", (60, 40), (255, 255, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif, quality=95)
    image = decode_image(data, max_pixels=MAX_PIXELS, label="rotated").to_pil()
    assert image.size == (40, 60)
    assert image.getpixel((35, 5))[0] > 200 and image.getpixel((35, 5))[1] < 60  # marker now at the top-right
    assert image.getpixel((5, 5))[1] > 200


# ---------------------------------------------------------------------------------- hostile files


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns above its own 89M
@pytest.mark.parametrize("name", list(hostile_files()))
def test_hostile_files_are_refused_with_the_right_status(name, monkeypatch):
    data, status = hostile_files()[name]
    loads = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or original_load(self))
    with pytest.raises(ImageDecodeError) as rejected:
        decode_image(data, max_pixels=MAX_PIXELS, label=f"file {name!r}")
    assert DECODE_STATUS[rejected.value.kind] == status
    assert name in str(rejected.value)  # the error names the file
    if status == 413:
        assert loads == [], "a too-large image must be refused before its pixels are decoded"


def test_bomb_is_small_on_disk():
    assert len(hostile_files()["bomb: 12000x12000 grey png of zeros"][0]) < 1_000_000  # 144 MB once decoded


def test_polyglots_decode_only_as_the_image_they_are():
    png = encode(Image.new("RGB", (20, 10), (0, 128, 255)), "PNG")
    # A PNG with a zip / HTML payload appended is a valid PNG: served as an image, the rest ignored.
    for payload in (b"PK\x03\x04" + b"\x00" * 100, b"<script>alert(1)</script>"):
        image = decode_image(png + payload, max_pixels=MAX_PIXELS, label="polyglot").to_pil()
        assert image.size == (20, 10) and image.getpixel((0, 0)) == (0, 128, 255)


def test_pixel_limit_is_a_setting():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, max_pixels=10_000, label="x").size == (100, 100)
    with pytest.raises(ImageDecodeError, match="10000 pixels, over MAX_IMAGE_PIXELS=9999"):
        decode_image(data, max_pixels=9_999, label="x")


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [(None, True), ("", True), ("image/png", True), ("image/jpeg; q=1", True), ("application/octet-stream", True),
     ("text/plain", False), ("text/html; charset=utf-8", False), ("application/json", False)],
)  # fmt: skip
def test_declared_content_type(content_type, accepted):
    if accepted:
        check_content_type(content_type, label="f")
    else:
        with pytest.raises(ImageRejected) as rejected:
            check_content_type(content_type, label="file 'f'")
        assert rejected.value.status == 415 and "file 'f'" in rejected.value.detail


@pytest.mark.parametrize("error", [struct.error("unpack requires a buffer"), RuntimeError("decoder state"),
                                   TypeError("bad operand"), NotImplementedError("variant"), KeyError("mode"),
                                   IndexError("list index"), ZeroDivisionError("division by zero")])  # fmt: skip
def test_whatever_a_decoder_raises_is_a_4xx_naming_the_file(error, monkeypatch):
    def failing_load(self):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    with pytest.raises(ImageDecodeError) as rejected:
        decode_image(encode(Image.new("RGB", (8, 8)), "PNG"), max_pixels=MAX_PIXELS, label="file 'odd.png'")
    assert 400 <= DECODE_STATUS[rejected.value.kind] < 500 and "file 'odd.png'" in str(rejected.value)
    assert type(error).__name__ in str(rejected.value)  # the reason is named


def test_psd_is_served_as_its_composite():
    image = decode_image(psd(7, 5, (200, 100, 50)), max_pixels=MAX_PIXELS, label="layered.psd").to_pil()
    assert image.size == (7, 5) and image.getpixel((3, 2)) == (200, 100, 50)


@pytest.mark.parametrize(("value", "grey"), [(2**30, 128), (2**31 - 1, 255), (70_000, 0), (0, 0)])
def test_32_bit_integer_tiff_is_scaled_by_its_real_range(value, grey):
    data = encode(Image.new("I", (4, 3), value), "TIFF")  # Pillow writes "I" as 32-bit signed samples
    image = decode_image(data, max_pixels=MAX_PIXELS, label="deep.tiff").to_pil()
    assert image.getpixel((0, 0)) == (grey, grey, grey)


def test_an_upload_is_parsed_in_a_decoding_process_never_in_the_server_and_decoded_as_displayed(monkeypatch):
    # The event loop only routes: header and pixels are read by the decoding processes (service/decode_pool.py).
    import asyncio

    from starlette.datastructures import Headers, UploadFile

    from service.settings import Settings
    from service.uploads import UploadDecoders, decode_upload

    data = encode(Image.new("RGBA", (30, 20), (200, 10, 10, 0)), "PNG")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args) or real_open(*args, **kwargs))
    upload = UploadFile(file=io.BytesIO(data), filename="x.png", headers=Headers({"content-type": "image/png"}))

    async def decode():
        decoders = UploadDecoders(Settings(max_image_pixels=MAX_PIXELS, decode_workers=1))
        await decoders.start()
        try:
            queueable = lambda image: tuple(image.pixels[0, 0])  # noqa: E731
            return await decode_upload(upload, label="file 'x.png'", decoders=decoders, queueable=queueable)
        finally:
            await decoders.stop()

    decoded = asyncio.run(decode())
    assert opened == []  # not in this process
    assert decoded.size == (30, 20) and tuple(decoded.queued) == (255, 255, 255)  # transparent onto white, in RGB


def test_the_decoding_processes_never_import_torch():
    # Their fork server imports service/decode_pool.py's PRELOADED once: torch there cost each server about 4 s at
    # start and a parser-facing process holding all of torch (detection.decoding reached it through
    # detection.images); PIL and numpy are all a decode needs (detection.pixels).
    import subprocess
    import sys

    from service.decode_pool import PRELOADED
    from tests.conftest import REPO_ROOT

    modules = [name for name in PRELOADED if name != "__main__"]
    found = "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))"
    probe = f"import sys; import {', '.join(modules)}; print({found})"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{modules} import {result.stdout.strip()[:200]}"
