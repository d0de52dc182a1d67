"""One request's image or failure never reaches another's answer; any image the limits admit is served."""

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import (
    CLASS_NAMES,
    SERVED_TINY,
    assert_start_refused,
    noise_image_bytes,
    save_tiny_classifier,
    serving,
    wait_ready,
)
from PIL import Image

from detection import build_detector, save_detector
from detection.decoding import DecodedImage
from service import Settings, create_app
from service.batching import BatchingEngine

GUARD_S = 60  # a deadlock guard for waits that end on an event, never a speed goal


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    detector = folder / "tiny_detector.safetensors"
    save_detector(detector, model=build_detector(class_names=CLASS_NAMES, **SERVED_TINY))
    classifier = folder / "tiny_classifier.safetensors"
    save_tiny_classifier(classifier)
    return detector, classifier


def make_app(model_paths, **overrides):
    detector, classifier = model_paths
    options = {"optimize": False, "max_batch": 4, "max_batch_wait_ms": 2} | overrides
    return create_app(Settings(detector_checkpoint=detector, classifier_checkpoint=classifier, **options))


@pytest.fixture(scope="module")
def client(model_paths):
    with serving(make_app(model_paths), raise_server_exceptions=False) as test_client:
        yield test_client


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def rotated_jpeg(stored_width: int, stored_height: int) -> bytes:
    """Stored stored_width x stored_height, displayed rotated 90 degrees (EXIF Orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (stored_width, stored_height), (200, 90, 40)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ the engine alone


def test_a_failing_item_fails_only_its_own_request_in_a_shared_batch():
    batches = []

    def fragile(items):
        batches.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def scenario():
        engine = BatchingEngine(name="test", run_batch=fragile, max_batch=8, max_wait_s=60, max_queue=16)
        await engine.start()
        try:
            items = ["a", "b", "c", "bad", "d", "e", "f", "g"]
            return await asyncio.gather(*(engine.submit(item) for item in items), return_exceptions=True)
        finally:
            await engine.stop()

    outcomes = asyncio.run(scenario())
    assert batches[0] == ["a", "b", "c", "bad", "d", "e", "f", "g"]  # they did share one batch
    assert isinstance(outcomes[3], ValueError) and "bad item" in str(outcomes[3])
    assert [result for result, _ in outcomes[:3] + outcomes[4:]] == ["A", "B", "C", "D", "E", "F", "G"]


# --------------------------------------------------------------------------------- through the API


EXTREME = {
    "4000x8 png": (png(4000, 8), (4000, 8)),
    "129x1 png": (png(129, 1), (129, 1)),
    "1x129 png": (png(1, 129), (1, 129)),
    "8x4000 as displayed (EXIF-rotated 4000x8 jpeg)": (rotated_jpeg(4000, 8), (8, 4000)),
}


@pytest.mark.parametrize("name", list(EXTREME))
@pytest.mark.parametrize("route", ["/detect", "/classify"])
def test_extreme_aspect_ratios_are_served(client, route, name):
    data, (width, height) = EXTREME[name]
    params = {"score_threshold": 0.0} if route == "/detect" else {}  # /classify refuses a parameter it lacks
    response = client.post(route, files={"file": ("x", data, "image/png")}, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": width, "height": height}
    for detection in body.get("detections", []):
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


POISON = 0.123  # the score threshold that makes the patched model raise


def test_a_request_that_fails_in_a_shared_batch_fails_alone(model_paths):
    """Seven ordinary requests and one whose computation raises share one batch: only that one fails."""
    app = make_app(model_paths, max_batch=8)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        engine = app.state.service.registry.default("detector").engine
        engine.max_wait_s = 600  # the batch closes when all eight are in, not on a timer
        real_run, batch_sizes = engine.run_batch, []

        def fragile(batch):
            batch_sizes.append(len(batch))
            if any(request.score_threshold == POISON for request in batch):
                raise RuntimeError("kernel failed on this input")
            return real_run(batch)

        engine.run_batch = fragile
        thresholds = [0.0] * 7 + [POISON]
        answers = [None] * len(thresholds)

        def send(index):
            files = {"file": (f"{index}.png", noise_image_bytes(seed=index), "image/png")}
            answers[index] = client.post("/detect", files=files, params={"score_threshold": thresholds[index]})

        threads = [threading.Thread(target=send, args=(index,)) for index in range(len(thresholds))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        engine.run_batch = real_run
    assert batch_sizes[0] == 8  # all eight were computed together first
    assert [answer.status_code for answer in answers] == [200] * 7 + [500]
    assert "kernel failed" not in answers[7].text  # the client gets no internals
    assert all(answer.json()["timing_ms"]["batch_size"] == 8 for answer in answers[:7])


# -------------------------------------------------------------------------------- bounded memory


def peak_growth_mb(action) -> float:
    """How far the resident memory peaks above its level before `action()` (Linux: resets VmHWM)."""
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("peak resident memory is read from /proc/self (Linux)")

    def field(name: str) -> int:
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith(name))

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = field("VmRSS:")
    action()
    return (field("VmHWM:") - before) / 1024


@pytest.mark.parametrize(("width", "height"), [(1_000_000, 1), (1, 1_000_000)])
def test_classifier_preprocessing_caps_both_sides(width, height):
    """A legal 1 x 1,000,000 PNG (3 KB) once cost gigabytes: the shorter side went to 32 px and the longer with it."""
    from backbone import create_model
    from detection.decoding import decode_image
    from service.predictors import ClassifierPredictor

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    image = decode_image(buffer.getvalue(), max_pixels=40_000_000, label="long")
    predictor = ClassifierPredictor(
        create_model("cifar_resnet20", base_width=4), class_names=[str(i) for i in range(10)],
        preprocessing={"size": 32}, device=torch.device("cpu"), optimize=False, bf16=False,
    )  # fmt: skip
    prepared = []
    growth = peak_growth_mb(lambda: prepared.append(predictor.prepare(image)))
    assert tuple(prepared[0].shape) == (3, 32, 32)
    assert growth < 50, f"preparing a {width}x{height} image raised the peak by {growth:.0f} MB"


@pytest.mark.parametrize(("width", "height"), [(1_000_000, 1), (1, 1_000_000), (300, 200)])
def test_a_detector_queue_entry_and_its_batch_time_preparation_stay_small(model_paths, width, height):
    """What a legal upload costs from admission to its answer: its queue entry (the cheaper of the 8-bit source and
    the float input, so a 3 MB 1 x 1,000,000 line waits as 1.5 KB) and the peak of preparing and running it."""
    from detection.predictor import Cut, Predictor

    predictor = Predictor.from_checkpoint(model_paths[0], device="cpu", precision="fp32", optimize=False)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = DecodedImage(pixels=pixels)
    answers = []
    growth = peak_growth_mb(lambda: answers.append(predictor.run([predictor.queueable(image)], [Cut()])))
    entry = predictor.queueable(image)
    assert entry.nbytes == min(pixels.nbytes, predictor.prepared_nbytes(height, width))
    assert entry.nbytes <= 4 * 3 * SERVED_TINY["max_size"] ** 2 and len(answers) == 1
    assert growth < 50, f"admitting and running a {width}x{height} image raised the peak by {growth:.0f} MB"


@pytest.mark.parametrize(
    ("size", "preprocessing"),
    [((80, 50), {"size": 32}), ((300, 200), {"size": 224, "resize": 256}), ((97, 500), {"size": 32, "resize": 40})],
)
def test_classifier_crop_is_torchvisions_resize_and_centre_crop(size, preprocessing):
    """Cropping the source region first changes no pixel by more than one 8-bit level."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2.functional import pil_to_tensor

    from backbone import create_model
    from service.predictors import ClassifierPredictor

    generator = torch.Generator().manual_seed(0)
    image = Image.fromarray(
        torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy()
    )
    predictor = ClassifierPredictor(
        create_model("cifar_resnet20", base_width=4), class_names=[str(i) for i in range(10)],
        preprocessing={**preprocessing, "mean": [0, 0, 0], "std": [1, 1, 1]}, device=torch.device("cpu"),
        optimize=False, bf16=False,
    )  # fmt: skip
    resize, crop = preprocessing.get("resize", preprocessing["size"]), preprocessing["size"]
    expected = v2.CenterCrop(crop)(v2.Resize(resize, antialias=True)(pil_to_tensor(image))).float() / 255
    ours = predictor.prepare(DecodedImage(np.asarray(image)))
    assert ours.shape == expected.shape == (3, crop, crop)
    assert float((ours - expected).abs().max()) * 255 <= 1.01


def recorded_requests(served) -> list:
    """Every request `served`'s engine is given, recorded (the engine's submit wrapped; restore with `del`)."""
    real_submit, queued = served.engine.submit, []

    async def recording_submit(request):
        queued.append(request)
        return await real_submit(request)

    served.engine.submit = recording_submit
    return queued


def test_queued_detect_requests_hold_the_cheaper_of_the_8_bit_source_and_the_model_input(model_paths):
    app = make_app(model_paths)
    with TestClient(app) as client:
        wait_ready(client)
        served = app.state.service.registry.default("detector")
        queued = recorded_requests(served)
        large = client.post("/detect", files={"file": ("big.png", png(3000, 2000), "image/png")})
        small_png = noise_image_bytes((150, 100))
        small = client.post(
            "/detect", files={"file": ("small.png", small_png, "image/png")}, params={"score_threshold": 0.001}
        )
        del served.engine.submit
        # prepared at batch time, it answers exactly as the Predictor's own predict, which prepares first
        (expected,) = served.predictor.predictor.predict([small_png], score_threshold=0.001)
        assert small.json()["detections"] == expected["detections"] and expected["detections"]
        assert app.state.service.decoders.memory.used == 0  # both batches have run: nothing is held any more
    assert large.status_code == 200 and large.json()["image"] == {"width": 3000, "height": 2000}
    assert small.status_code == 200 and small.json()["image"] == {"width": 150, "height": 100}
    large_request, small_request = queued
    # 6 M pixels: prepared at admission, the model's input size in the float the network takes
    assert large_request.image.pixels.dtype == torch.float32
    assert tuple(large_request.image.pixels.shape) == (3, *served.predictor.model.transform.resized_size(2000, 3000))
    assert large_request.nbytes == large_request.image.nbytes <= 4 * 3 * SERVED_TINY["max_size"] ** 2
    # 150x100 as 8-bit (45 KB) is smaller than its float input at 128x85 (131 KB): queued as decoded
    assert isinstance(small_request.image, DecodedImage) and small_request.image.pixels.dtype == np.uint8
    assert small_request.nbytes == 150 * 100 * 3 < served.predictor.predictor.prepared_nbytes(100, 150)


def test_a_flood_of_large_images_gets_503_by_bytes_before_the_count_limit(model_paths, batch_gate):
    """200x150 noise: 90 KB queued (8-bit), 660 KB reserved while it decodes. A budget of one decode and three queued
    images turns the flood away by bytes while the queue holds 3 of its 64 places."""
    budget = 22 * 200 * 150 + 3 * 200 * 150 * 3
    app = make_app(model_paths, image_memory_bytes=budget, max_batch=1, max_queue=64)
    uploads = [noise_image_bytes((200, 150), seed=seed) for seed in range(8)]
    with TestClient(app) as client:
        wait_ready(client)
        served = app.state.service.registry.default("detector")
        memory, gate = app.state.service.decoders.memory, batch_gate(served.engine)  # the app's one budget
        highest = []
        answers = {}

        def send(index: int) -> None:
            answers[index] = client.post("/detect", files={"file": ("noise.png", uploads[index], "image/png")})

        with ThreadPoolExecutor(len(uploads)) as pool:
            pool.submit(send, 0)
            gate.wait_entered()
            for index in range(1, len(uploads)):  # one after another: each is queued or answered before the next
                depth = served.engine.queue_depth
                sent = pool.submit(send, index)
                deadline = time.monotonic() + GUARD_S
                while not sent.done() and served.engine.queue_depth == depth:
                    assert time.monotonic() < deadline, "neither queued nor answered"
                    time.sleep(0.005)
                highest.append(memory.used)
            refused = [answer for answer in answers.values() if answer.status_code == 503]
            waiting = served.engine.queue_depth
            gate.release()
        assert memory.used == 0
    statuses = [answers[index].status_code for index in range(len(uploads))]
    assert refused and waiting < 64, statuses
    assert statuses[: 1 + waiting] == [200] * (1 + waiting) and set(statuses[1 + waiting :]) == {503}, statuses
    assert all(
        answer.headers["retry-after"] == "1" and "memory budget" in answer.json()["detail"] for answer in refused
    )
    assert max(highest) <= budget


# ---------------------------------------------------------------------------------- error contract


def assert_error_shape(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "request_id"} and isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_every_error_is_json_with_the_request_id(client):
    assert_error_shape(client.get("/nope"), 404)
    not_allowed = client.delete("/detect")
    assert_error_shape(not_allowed, 405)
    assert "POST" in not_allowed.headers["allow"]
    assert_error_shape(client.post("/classify", files={"file": ("x.png", b"", "image/png")}), 400)
    assert_error_shape(client.post("/classify", files={"file": ("x.txt", b"hi", "text/plain")}), 415)
    assert_error_shape(
        client.post("/classify", files={"file": ("x.png", png(4, 4), "image/png")}, params={"top_k": 0}), 422
    )


def test_every_response_carries_a_request_id_and_a_sane_client_id_is_kept(client):
    for response in (
        client.get("/healthz"),
        client.get("/metrics"),
        client.post("/classify", files={"file": ("x.png", png(9, 9), "image/png")}),
    ):
        assert len(response.headers["x-request-id"]) >= 8
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42.a_b"}).headers["x-request-id"] == "trace-42.a_b"
    for insane in ("x" * 65, "two words", "evil\tlog", ""):
        answered = client.get("/nope", headers={"X-Request-ID": insane})
        assert answered.headers["x-request-id"] != insane and answered.json()["request_id"] != insane


def test_an_unexpected_exception_is_a_json_500_and_the_traceback_goes_to_the_log(client, caplog):
    engine = client.app.state.service.registry.default("classifier").engine
    real_run = engine.run_batch

    def broken(batch):
        raise RuntimeError("secret internal state 0xdeadbeef")

    engine.run_batch = broken
    try:
        with caplog.at_level("ERROR", logger="service"):
            response = client.post(
                "/classify", files={"file": ("x.png", png(9, 9), "image/png")}, headers={"X-Request-ID": "abc123"}
            )
    finally:
        engine.run_batch = real_run
    body = assert_error_shape(response, 500)
    assert body["request_id"] == "abc123" and "abc123" in body["detail"]
    assert "0xdeadbeef" not in response.text and "Traceback" not in response.text
    logged = [record for record in caplog.records if "abc123" in record.getMessage()]
    assert logged and logged[0].exc_info is not None and "0xdeadbeef" in str(logged[0].exc_info[1])


def test_the_body_limit_413_has_the_request_id(model_paths):
    with TestClient(make_app(model_paths, max_upload_bytes=1000)) as client:
        response = client.post("/classify", files={"file": ("x.png", b"\0" * 5000, "image/png")})
    assert_error_shape(response, 413)


@pytest.mark.parametrize("route", ["/detect", "/classify", "/detect/annotated"])
def test_two_file_parts_in_a_single_image_route_is_422_naming_the_field(client, route):
    files = [("file", ("a.png", png(9, 9), "image/png")), ("file", ("b.png", png(5, 5), "image/png"))]
    body = assert_error_shape(client.post(route, files=files), 422)
    assert body["detail"].startswith("file:") and "2 parts" in body["detail"]


# ------------------------------------------------------------------------------------ metrics


def test_random_methods_and_paths_do_not_grow_metrics(client):
    import secrets

    for _ in range(3):  # every label combination the loop below can reach exists before measuring
        client.request("NOTAMETHOD", "/healthz")
        client.get("/no/such/path")
    before = len(client.get("/metrics").text)
    for _ in range(200):
        method = secrets.token_hex(600).upper()  # a 1200-character method name, new every time
        assert client.request(method, "/healthz").status_code == 405
        assert client.get(f"/no/such/{secrets.token_hex(8)}").status_code == 404
    text = client.get("/metrics").text
    assert len(text) - before < 2_000, f"/metrics grew by {len(text) - before} bytes"
    assert 'method="other"' in text and 'route="unmatched"' in text


def test_metrics_report_the_process_memory(client):
    text = client.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert f"\n{name} " in text, name


# ------------------------------------------------------------------------------ configuration mistakes


@pytest.mark.parametrize(("name", "value"), [("API_KEY", ""), ("API_KEY", "   "), ("API_KEY", " key "),
                                             ("MAX_UPLOAD_BYTES", "0"), ("MAX_IMAGE_PIXELS", "-1"),
                                             ("MAX_QUEUE", "0"), ("MAX_FILES", "0")])  # fmt: skip
def test_a_setting_that_would_disable_a_protection_stops_the_start(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    assert_start_refused(monkeypatch)
    assert f"{name}:" in capsys.readouterr().err  # names the setting


def test_an_empty_api_key_is_not_read_as_unset(model_paths):
    with pytest.raises(ValueError, match="API_KEY is set but empty"):
        Settings(api_key="")
    with pytest.raises(ValueError, match="API_KEY"):
        with TestClient(make_app(model_paths, api_key="")):
            pass


# ------------------------------------------------------------------------------ large images


def test_a_second_large_image_meanwhile_gets_503_with_retry_after_and_small_ones_pass(client):
    from service.memory import LARGE_IMAGE_PIXELS

    side = int(LARGE_IMAGE_PIXELS**0.5) + 1
    large = png(side, side)
    decoders = client.app.state.service.decoders
    held = client.portal.call(decoders.large._idle.get)  # a large image is being decoded by another request
    try:
        busy = client.post("/classify", files={"file": ("big.png", large, "image/png")})
        small = client.post("/classify", files={"file": ("small.png", png(64, 48), "image/png")})
    finally:
        client.portal.call(decoders.large._idle.put, held)
    assert busy.status_code == 503, busy.text
    assert busy.headers["retry-after"] == "1"
    assert "another large image" in busy.json()["detail"] and busy.json()["request_id"]
    assert small.status_code == 200
    served = client.post("/classify", files={"file": ("big.png", large, "image/png")})
    assert served.status_code == 200 and served.json()["image"] == {"width": side, "height": side}


@pytest.mark.skipif(not hasattr(__import__("os"), "getpriority"), reason="process priorities are a POSIX feature")
def test_large_images_decode_in_a_process_of_the_lowest_cpu_priority_the_others_at_normal(client):
    import os

    decoders = client.app.state.service.decoders
    assert [os.getpriority(os.PRIO_PROCESS, worker.process.pid) for worker in decoders.large._all] == [19]
    assert {os.getpriority(os.PRIO_PROCESS, worker.process.pid) for worker in decoders.pool._all} == {
        os.getpriority(os.PRIO_PROCESS, 0)
    }
