"""Mutation fuzzing of the service's decoder, as the trusted image libraries fuzz theirs: valid files of every
accepted format (IMAGE_FORMATS), mutated by hypothesis from a fixed seed (byte flips, a chunk duplicated many
times, a length field made huge, truncation), each run through the decoding processes as an upload is.
Every input must come back decoded or refused (ImageDecodeError, the CPU-time or the memory budget); a
worker that dies on it, or any other exception, is a finding, kept in tests/decode_regressions/ and tried
first on every later run. Bounded: EXAMPLES inputs, well under 60 s on two busy cores; `python -m bench.decode_fuzz
--examples N` runs the same fuzzer longer (RESDET_FUZZ_EXAMPLES).
"""

import asyncio
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from detection.decoding import DecodedImage, ImageDecodeError
from service.decode_pool import DecodeBudgetExceeded, DecodePool, MemoryRefused
from service.images import ImageHeader, decode_unless_large
from service.memory import LARGE_IMAGE_PIXELS, MemoryBudget
from service.settings import DEFAULT_IMAGE_FORMATS

REGRESSIONS = Path(__file__).resolve().parent / "decode_regressions"
MAX_PIXELS = 4_000_000
EXAMPLES = int(os.environ.get("RESDET_FUZZ_EXAMPLES", "1000"))  # make test: 1000; bench.decode_fuzz: more


def _seed_files() -> dict[str, bytes]:
    """One small valid file per accepted format, with structure to mutate (chunks, frames, strips, scans)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    files = {}
    for image_format in DEFAULT_IMAGE_FORMATS:
        buffer = io.BytesIO()
        if image_format == "PNG":
            text = PngImagePlugin.PngInfo()
            text.add_text("comment", "x" * 40)
            image.save(buffer, format="PNG", pnginfo=text)
        elif image_format == "JPEG":
            image.save(buffer, format="JPEG", progressive=True, quality=80)
        elif image_format == "GIF":
            image.save(buffer, format="GIF", save_all=True, append_images=[image.rotate(90)], comment=b"hi")
        elif image_format == "TIFF":
            image.save(buffer, format="TIFF", tiffinfo={278: 4})  # RowsPerStrip 4: six strips
        else:
            image.save(buffer, format=image_format)
        files[image_format] = buffer.getvalue()
    return files


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:  # truncated to nothing: nothing left to mutate
            break
        kind = draw(st.sampled_from(["flip", "duplicate", "huge length", "truncate"]))
        if kind == "flip":
            for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
                data[position] ^= draw(st.integers(1, 255))
        elif kind == "duplicate":  # a chunk, marker or block repeated many times
            start = draw(st.integers(0, len(data) - 1))
            piece = data[start : start + draw(st.integers(1, 64))]
            data[start:start] = piece * draw(st.integers(2, 2000))
        elif kind == "huge length":  # a size or length field claiming gigabytes
            position = draw(st.integers(0, max(0, len(data) - 4)))
            data[position : position + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"]))
        else:
            del data[draw(st.integers(0, max(0, len(data) - 1))) :]
    return bytes(data)


@pytest.fixture(scope="module")
def decode():
    """Run the upload decode job in a decoding process, as the service does (0.5 s of CPU each, 512 MB)."""
    loop = asyncio.new_event_loop()
    pool = DecodePool(workers=2, cpu_budget_s=0.5, memory=MemoryBudget(512 * 1024 * 1024))
    loop.run_until_complete(pool.start())
    formats = list(DEFAULT_IMAGE_FORMATS)

    def run(data: bytes):
        job = pool.run(decode_unless_large, data, MAX_PIXELS, "fuzzed", formats, LARGE_IMAGE_PIXELS)
        return loop.run_until_complete(job)

    yield run
    loop.run_until_complete(pool.stop())
    loop.close()


def assert_decoded_or_refused(decode, data: bytes) -> None:
    try:
        outcome = decode(data)
    except (ImageDecodeError, DecodeBudgetExceeded, MemoryRefused):
        return
    except Exception as error:  # a dead worker (DecoderCrashed) or an exception the decoder let through
        REGRESSIONS.mkdir(exist_ok=True)
        kept = REGRESSIONS / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
        kept.write_bytes(data)
        raise AssertionError(f"{type(error).__name__}: {error}; input kept as {kept.name}: commit it") from error
    assert isinstance(outcome, (DecodedImage, ImageHeader)), type(outcome)
    if isinstance(outcome, DecodedImage):
        width, height = outcome.size
        assert width * height <= MAX_PIXELS and outcome.pixels.shape == (height, width, 3)


@pytest.mark.parametrize("name", sorted(path.name for path in REGRESSIONS.glob("*.bin")) or ["(none yet)"])
def test_kept_regressions_are_decoded_or_refused(decode, name):
    if name == "(none yet)":
        pytest.skip("no fuzzing finding kept yet in tests/decode_regressions/")
    assert_decoded_or_refused(decode, (REGRESSIONS / name).read_bytes())


def test_every_seed_file_decodes(decode):
    for image_format, data in SEEDS.items():
        assert isinstance(decode(data), DecodedImage), image_format


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


@FUZZ_SETTINGS
@given(data=mutated())
def test_mutated_files_of_every_accepted_format_are_decoded_or_refused_within_budget(decode, data):
    assert_decoded_or_refused(decode, data)
