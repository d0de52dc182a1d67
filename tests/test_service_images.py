"""Upload decoding (detection.decoding, the one decoder): every image mode the API promises, EXIF orientation,
and hostile files refused early with the right HTTP status."""

import functools
import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from detection.decoding import ImageDecodeError, decode_image
from service.images import DECODE_STATUS, ImageRejected, check_content_type

MAX_PIXELS = 40_000_000


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def grey_png_bomb(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A valid 8-bit grey PNG of zeros: kilobytes on disk, width*height bytes once decoded.

    `rows` writes only that many rows of data (a header promising more than the file holds).
    """
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + samples
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF header is rewritten to claim width x height."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (10, 20, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


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


def dds_with_zeroed_pixel_format() -> bytes:
    """A DDS header whose pixel-format flags are 0: Pillow raises NotImplementedError while opening it."""
    header = struct.pack("<4s7I", b"DDS ", 124, 0x1007, 8, 8, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<2I", 32, 0) + b"\0" * 24
    return header + pixel_format + b"\0" * 20 + b"\0" * 256


def jpeg_with_ascii_xresolution() -> bytes:
    """A rotated JPEG (Orientation 6) whose EXIF XResolution is ASCII, not RATIONAL: TypeError in exif_transpose."""
    entries = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">HHI", 0x011A, 2, 4) + b"72\0\0"
    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 2) + entries + struct.pack(">I", 0)
    return encode(Image.new("RGB", (16, 8), (1, 2, 3)), "JPEG", exif=b"Exif\0\0" + tiff)


def psd(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A minimal valid RGB Photoshop file (no layers, raw planar composite): Pillow reads but cannot write PSD."""
    header = b"8BPS" + struct.pack(">H", 1) + b"\0" * 6 + struct.pack(">HIIHH", 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0)  # colour mode, resources, layers; raw data
    return header + sections + b"".join(bytes([channel]) * (width * height) for channel in rgb)


@functools.cache
def hostile_files() -> dict[str, tuple[bytes, int]]:
    """name -> (file, expected status); generated here, nothing is read from disk."""
    jpeg = encode(Image.new("RGB", (64, 48), (30, 60, 90)), "JPEG")
    png = encode(Image.new("RGB", (64, 48), (30, 60, 90)), "PNG")
    gif = encode(Image.new("RGB", (64, 48), (30, 60, 90)).quantize(16), "GIF")
    tiff = encode(Image.new("RGB", (64, 48), (30, 60, 90)), "TIFF")
    webp = encode(Image.new("RGB", (64, 48), (30, 60, 90)), "WEBP", lossless=True)
    return {
        "dds with zeroed pixel-format flags": (dds_with_zeroed_pixel_format(), 415),
        "jpeg whose exif xresolution is ascii": (jpeg_with_ascii_xresolution(), 400),
        "truncated gif": (gif[: len(gif) // 2], 400),
        "truncated tiff": (tiff[: len(tiff) // 2], 400),
        "truncated webp": (webp[: len(webp) // 2], 400),
        "empty": (b"", 400),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], 400),
        "truncated png": (png[: len(png) - 40], 400),
        "text": (b"just some text, not an image\n" * 10, 400),
        "html": (b"<!doctype html><html><body><script>alert(1)</script></body></html>", 400),
        "html with a png signature inside": (b"<html>" + png + b"</html>", 400),
        "png header only": (png[:33], 400),
        "bomb: 12000x12000 grey png of zeros": (grey_png_bomb(12000, 12000), 413),
        "huge dimensions: png header 100000x100000": (grey_png_bomb(100_000, 100_000, rows=1), 413),
        "huge dimensions: jpeg header 60000x60000": (jpeg_with_size(60000, 60000), 413),
    }


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
            prepare = lambda image: tuple(image.pixels[0, 0])  # noqa: E731
            return await decode_upload(upload, label="file 'x.png'", decoders=decoders, prepare=prepare)
        finally:
            await decoders.stop()

    decoded = asyncio.run(decode())
    assert opened == []  # not in this process
    assert decoded.size == (30, 20) and tuple(decoded.prepared) == (255, 255, 255)  # transparent onto white, in RGB
