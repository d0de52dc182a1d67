"""Helpers the test modules share (images, tiny models, waiting for a served app); fixtures live in conftest.py."""

import contextlib
import functools
import io
import re
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from backbone import create_model
from backbone.serving_checkpoint import load_checkpoint, save_checkpoint, save_classifier
from detection.images import to_float_image
from detection.torchvision_compat import make_trained_like

TINY = dict(
    base_width=8, min_size=64, max_size=96, fpn_channels=32, representation_size=64,
    rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
    rpn_batch_size_per_image=64, box_batch_size_per_image=64,
)  # fmt: skip


def synthetic_batch(seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two noisy images with bright rectangles (class 1) and dark ones (class 2), and their boxes."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for height, width in ((96, 128), (112, 80)):
        image = 0.5 + 0.05 * torch.randn(3, height, width, generator=generator)
        boxes, labels = [], []
        for label, value, (x1, y1, x2, y2) in ((1, 1.0, (8, 10, 40, 50)), (2, 0.0, (45, 52, 75, 90))):
            image[:, y1:y2, x1:x2] = value
            boxes.append([x1, y1, x2, y2])
            labels.append(label)
        images.append(image.clamp(0, 1))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def assert_detections_valid(
    detections: list[dict], images: list[torch.Tensor], num_classes: int, *, require_detections: bool = True
) -> None:
    """One result per image, each well formed and, unless told otherwise, not empty: the callers keep every
    scored box (threshold 0) or use an untrained FPN detector, whose near-uniform class scores lie far above
    the 0.05 threshold, so zero detections there is a bug, not an outcome."""
    assert len(detections) == len(images)
    for detection, image in zip(detections, images):
        boxes, scores, labels = detection["boxes"], detection["scores"], detection["labels"]
        assert len(scores) > 0 or not require_detections
        assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape and boxes.dtype == torch.float32
        assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
        height, width = image.shape[-2:]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
        assert ((labels >= 1) & (labels <= num_classes)).all()
        assert (scores[:-1] >= scores[1:]).all()  # highest score first


REPO = Path(__file__).resolve().parents[1]


DEMO_IMAGES = REPO.parent / "shared" / "data" / "demo-images"


TEST_SETTINGS = dict(min_size=320, max_size=480, rpn_post_nms_top_n_test=100, box_score_thresh=0.02)


def randomised_torchvision(builder) -> nn.Module:
    """A randomly initialised torchvision detector that behaves like a trained COCO one (make_trained_like)."""
    torch.manual_seed(0)
    return make_trained_like(builder(weights=None, weights_backbone=None, **TEST_SETTINGS))


def sample_images() -> list[torch.Tensor]:
    if DEMO_IMAGES.is_dir():
        return [to_float_image(Image.open(DEMO_IMAGES / name)) for name in ("bus.jpg", "zidane.jpg")]
    generator = torch.Generator().manual_seed(0)  # shapes like the demo images, when shared/ is absent
    return [torch.rand(3, 1080, 810, generator=generator), torch.rand(3, 720, 1280, generator=generator)]


def assert_start_refused(monkeypatch) -> None:
    """`python -m service` (its main, in this process) with the environment as set: it must refuse to start
    (exit status 2) before uvicorn runs. The settings cache is cleared around it, so the environment is read."""
    from service import get_settings
    from service.__main__ import main as service_main

    monkeypatch.setattr("service.__main__.uvicorn.run", lambda *args, **kwargs: pytest.fail("the service started"))
    get_settings.cache_clear()
    try:
        assert service_main([]) == 2
    finally:
        get_settings.cache_clear()


def is_sentence(text: str) -> bool:
    """Non-empty, opens with a capital, a quote or a flag, closes with a period, brackets balanced."""
    return (
        bool(re.match(r'^([A-Z0-9"\'(]|--)', text))
        and text.endswith(".")
        and not re.search(r"\b(for|the|a|an|of|to|and|or|with|in)\.$", text)
        and text.count("(") == text.count(")")
        and text.count('"') % 2 == 0
    )


def assert_sentences(helps: dict[str, str]) -> None:
    broken = {name: text for name, text in helps.items() if not is_sentence(text)}
    assert not broken, f"help texts that are not a whole sentence: {broken}"


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


CLASSIFIER_CLASSES = [f"class{i}" for i in range(10)]


PREPROCESSING = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "size": 32}


def save_tiny_classifier(path: Path, *, seed: int = 0, provenance: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("cifar_resnet20", base_width=4).eval()
    for module in model.modules():  # random BN statistics, so BN folding is actually exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    save_classifier(
        path, model=model, architecture="cifar_resnet20", class_names=CLASSIFIER_CLASSES, preprocessing=PREPROCESSING,
        provenance=provenance or {"description": "random weights for tests"}, metrics={"top1_error": 0.9},
    )  # fmt: skip
    return model


def image_bytes(size=(32, 32), colour=(200, 30, 60), image_format="PNG", seed: int | None = None) -> bytes:
    if seed is None:
        image = Image.new("RGB", size, colour)
    else:
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
        image = Image.fromarray(pixels.numpy())
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


CLASS_NAMES = ["circle", "square", "triangle"]


SERVED_TINY = dict(
    backbone="resnet18", head="fpn", num_classes=3, base_width=8, fpn_channels=16, representation_size=32,
    min_size=(96,), max_size=128, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
)  # fmt: skip


def noise_image_bytes(size=(80, 60), seed=0, image_format="PNG", **options) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Until /readyz answers 200: warm-up is a background task of the lifespan."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


def warmed_up(client: TestClient, timeout: float = 120.0):
    """/readyz once the warm-up is over, ready or failed (a failed one answers 503 saying why)."""
    deadline = time.monotonic() + timeout
    while "warming up" in (readiness := client.get("/readyz")).text:
        assert time.monotonic() < deadline, readiness.text
        time.sleep(0.02)
    return readiness


@contextlib.contextmanager
def serving(app_or_settings, *, raise_server_exceptions: bool = True, timeout: float = 60.0) -> Iterator[TestClient]:
    """A TestClient of `create_app(settings)` (or of an app), its lifespan run and its models warmed up: the one
    way every service test module makes its `client` fixture."""
    from service import Settings, create_app

    app = create_app(app_or_settings) if isinstance(app_or_settings, Settings) else app_or_settings
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        wait_ready(client, timeout=timeout)
        yield client


def rename_in_manifest(path: Path, name: str) -> Path:
    state_dict, manifest = load_checkpoint(path)
    return save_checkpoint(path, state_dict=state_dict, manifest={**manifest, "name": name})


class RectangleFinder(nn.Module):
    """A stand-in detector: one box per distinct non-zero value of channel 0, around the pixels holding it.
    At test size 2 it reports every box 2 px lower, with score 0.6 instead of 0.9."""

    def __init__(self) -> None:
        super().__init__()
        self.roi_heads = SimpleNamespace(nms_thresh=0.5, detections_per_img=100)
        self.calls: list[dict] = []

    def forward(self, images, *, test_size=None, **kwargs):
        self.calls.append({"test_size": test_size, **kwargs})
        detections = []
        for image in images:
            boxes = []
            for value in image[0].unique():
                if value == 0:
                    continue
                ys, xs = torch.where(image[0] == value)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            shifted = test_size == 2
            if shifted:
                boxes[:, [1, 3]] += 2
            scores = torch.full((len(boxes),), 0.6 if shifted else 0.9)
            detections.append({"boxes": boxes, "scores": scores, "labels": torch.ones(len(boxes), dtype=torch.int64)})
        return {}, detections
