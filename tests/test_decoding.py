"""detection.decoding, the one decoder of the CLI and the service: bit depths kept, files and bytes alike,
one error type whose kind says what failed, and a result that crosses process boundaries."""

import io
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image

from detection.decoding import DecodedImage, ImageDecodeError, decode_image
from detection.prediction_pipeline import decode_image as decode_for_cli


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_16_bit_greyscale_is_kept_wide_and_8_bit_stays_uint8():
    sixteen = Image.new("I;16", (5, 4), 1000)  # 1000 / 65535: below one 8-bit level (1 / 255 = 257 / 65535)
    wide = decode_image(encode(sixteen, "PNG"))
    assert wide.pixels.dtype == np.float32 and wide.pixels.shape == (4, 5, 3)
    assert np.allclose(wide.pixels, 1000 / 65535)
    narrow = decode_image(encode(Image.new("L", (5, 4), 77), "PNG"))
    assert narrow.pixels.dtype == np.uint8 and (narrow.pixels == 77).all() and narrow.size == (5, 4)


def test_a_path_and_its_bytes_decode_alike_with_exif_orientation(tmp_path):
    stored = Image.new("RGB", (60, 40), (255, 255, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    data = encode(stored, "JPEG", exif=exif, quality=95)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    from_path, from_bytes = decode_image(path), decode_image(data)
    assert from_path.size == from_bytes.size == (40, 60)
    assert np.array_equal(from_path.pixels, from_bytes.pixels)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (b"not an image\n" * 5, "unidentified"),
        (encode(Image.effect_noise((64, 48), 40).convert("RGB"), "JPEG")[:400], "corrupt"),
    ],
)
def test_each_failure_has_its_kind_and_names_the_image(data, kind):
    with pytest.raises(ImageDecodeError) as failed:
        decode_image(data, label="file 'x.png'")
    assert failed.value.kind == kind and "file 'x.png'" in str(failed.value)


def test_the_pixel_limit_is_read_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (100, 100)), "PNG"))
    with pytest.raises(ImageDecodeError, match="10000 pixels, over MAX_IMAGE_PIXELS=9999") as failed:
        decode_image(path, max_pixels=9_999)
    assert failed.value.kind == "too_many_pixels"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as failed:
        decode_image(empty)
    assert failed.value.kind == "empty"


def test_the_cli_records_the_decoders_message(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"hello")
    record = decode_for_cli(str(path)).record()
    assert record == {"file": str(path), "error": "the file is not an image in a format we read"}


def test_decoding_runs_in_a_worker_process():
    data = encode(Image.new("P", (7, 3), 0), "PNG")
    expected = decode_image(data)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        decoded = pool.submit(decode_image, data).result(timeout=60)
        with pytest.raises(ImageDecodeError) as failed:
            pool.submit(decode_image, b"", label="file 'e'").result(timeout=60)
    assert isinstance(decoded, DecodedImage) and np.array_equal(decoded.pixels, expected.pixels)
    assert failed.value.kind == "empty" and str(failed.value) == "file 'e' is empty"
    assert pickle.loads(pickle.dumps(failed.value)).kind == "empty"


def test_the_cli_reads_a_psd_as_the_service_does(tmp_path):
    """The CLI's own decoder called seek(0), which every PSD refuses (its layers are numbered from 1)."""
    from helpers import psd

    path = tmp_path / "layered.psd"
    path.write_bytes(psd(7, 5, (200, 100, 50)))
    decoded = decode_for_cli(str(path))
    assert decoded.error is None and tuple(decoded.pixels[:, 2, 3].tolist()) == (200, 100, 50)
