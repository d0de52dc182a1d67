"""Hostile uploads (issue 24): decoded in killable processes under a CPU-time budget, only in accepted formats,
never parsed on the event loop; and a client that leaves cancels its work."""

import io
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import save_tiny_classifier, serving, wait_ready
from PIL import Image

from service import Settings, create_app

GUARD_S = 60  # a deadlock guard for waits on conditions, never a speed goal


def jpeg_of_many_markers(segments: int) -> bytes:
    """An 8x8 JPEG behind `segments` empty comment segments: cheap to send, slow to walk (4 bytes each)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (its IHDR) and holds no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry says 256x256 (0 means 256) and holds `png`, whatever its real size."""
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
    return directory + png


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny_classifier.safetensors"
    save_tiny_classifier(path)
    return path


def started(classifier_path, **overrides) -> TestClient:
    options = {"classifier_checkpoint": classifier_path, "detector_checkpoint": None, "optimize": False} | overrides
    client = TestClient(create_app(Settings(**options)))
    client.__enter__()
    wait_ready(client)
    return client


@pytest.fixture(scope="module")
def client(classifier_path):
    options = {"classifier_checkpoint": classifier_path, "detector_checkpoint": None, "optimize": False}
    with serving(Settings(**options, decode_cpu_s=0.2)) as client:
        yield client


def classify(client: TestClient, data: bytes, name: str = "upload.bin"):
    return client.post("/classify", files={"file": (name, data, "application/octet-stream")})


def test_a_decode_over_its_cpu_budget_is_killed_and_answers_422_and_the_next_upload_is_served(client):
    replaced = metric(client, 'resdet_decode_workers_replaced_total{reason="over_budget"}')
    response = classify(client, jpeg_of_many_markers(1_000_000), "markers.jpg")  # about 1 s of CPU to walk
    assert response.status_code == 422, response.text
    body = response.json()
    assert "CPU-time budget" in body["detail"] and "DECODE_CPU_S=0.2" in body["detail"] and body["request_id"]
    assert metric(client, 'resdet_decode_workers_replaced_total{reason="over_budget"}') == replaced + 1
    assert classify(client, small_png()).status_code == 200  # its replacement serves the next one
    assert client.app.state.service.decoders.memory.used == 0  # the killed decode's reservation was returned


def pcx() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PCX")
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["ico of a 13000x13000 png", "pcx"])
def test_a_format_outside_the_allowlist_is_a_415_naming_the_accepted_ones(client, name):
    data = ico_holding(png_header_only(13000, 13000)) if name.startswith("ico") else pcx()
    response = classify(client, data, name)
    assert response.status_code == 415, response.text
    assert "accepted: JPEG, PNG, WEBP, GIF, BMP, TIFF" in response.json()["detail"]


def test_formats_whose_embedded_images_no_header_sizes_cannot_be_accepted():
    with pytest.raises(ValueError, match="IMAGE_FORMATS: ICO"):
        Settings(image_formats="PNG,ICO")


def test_healthz_answers_while_a_hostile_header_is_being_walked(classifier_path):
    """The header of the upload is walked in a decoding process: /healthz answers before that walk ends."""
    client = started(classifier_path, decode_cpu_s=30)
    try:
        answer = {}
        upload = threading.Thread(
            target=lambda: answer.update(response=classify(client, jpeg_of_many_markers(1_500_000), "slow.jpg"))
        )
        decoders = client.app.state.service.decoders
        upload.start()
        deadline = time.monotonic() + GUARD_S
        while decoders.pool._idle.qsize() == decoders.pool.workers:  # wait until its header job holds a worker
            assert time.monotonic() < deadline and upload.is_alive(), "the upload never reached a decoding process"
            time.sleep(0.005)
        assert client.get("/healthz").status_code == 200
        assert upload.is_alive(), "/healthz waited for the header walk to end"
        upload.join(GUARD_S)
        assert answer["response"].status_code == 200  # within its budget it is decoded as usual
    finally:
        client.__exit__(None, None, None)


def send_and_leave(url: str, body: bytes, boundary: str) -> None:
    """A whole multipart request sent on a raw socket, which is then closed without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(request)


def test_requests_abandoned_right_after_sending_are_not_computed(live_server, classifier_path, batch_gate):
    app = create_app(Settings(classifier_checkpoint=classifier_path, detector_checkpoint=None, optimize=False))
    url = live_server(app)
    engine = app.state.service.registry.slots["tiny_classifier"].served.engine
    gate = batch_gate(engine)
    computed = []
    run_batch = gate._run_batch
    gate._run_batch = lambda items: computed.extend(items) or run_batch(items)

    boundary = "hostile-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + small_png()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    held = {}
    holder = threading.Thread(  # a client that waits for its answer; its batch holds the model
        target=lambda: held.update(
            response=httpx.post(f"{url}/classify", files={"file": ("a.png", small_png(), "image/png")}, timeout=GUARD_S)
        )
    )
    holder.start()
    gate.wait_entered()
    abandoned = 20
    for _ in range(abandoned):
        send_and_leave(url, body, boundary)

    def cancelled() -> float:
        lines = httpx.get(f"{url}/metrics").text.splitlines()
        return sum(float(line.split()[-1]) for line in lines if line.startswith("resdet_cancelled_work_total{"))

    deadline = time.monotonic() + GUARD_S
    while cancelled() < abandoned:
        assert time.monotonic() < deadline, f"only {cancelled()} of {abandoned} abandoned requests were cancelled"
        time.sleep(0.02)
    gate.release()
    holder.join(GUARD_S)
    assert held["response"].status_code == 200
    # The engine runs its queue in order: once a request sent now is answered, every abandoned one was handled.
    probe = httpx.post(f"{url}/classify", files={"file": ("b.png", small_png(), "image/png")}, timeout=GUARD_S)
    assert probe.status_code == 200
    assert len(computed) == 2, f"{len(computed)} images computed: the held one, the probe, and abandoned ones"


# ------------------------------------------------------------------------------------ memory admission


def noisy_png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_an_image_needing_more_than_the_whole_image_memory_budget_is_413(classifier_path):
    client = started(classifier_path, image_memory_bytes=22 * 1000)  # 1000 8-bit pixels' worth
    try:
        response = classify(client, small_png())  # 40x30 = 1200 pixels
        assert response.status_code == 413, response.text
        assert "needs 26400 bytes to decode, over IMAGE_MEMORY_BYTES=22000" in response.json()["detail"]
    finally:
        client.__exit__(None, None, None)


def test_an_image_whose_queued_input_needs_more_than_the_whole_budget_is_413_naming_the_setting(classifier_path):
    """A 10x10 PNG decodes within 2,200 bytes, but waits for inference as the classifier's 32x32 float input
    (12,288 bytes): more than all of a 10,000-byte budget, so it could never be queued."""
    client = started(classifier_path, image_memory_bytes=10_000, warmup=False)  # warm-up would fail the same way
    try:
        response = classify(client, noisy_png(10, 10, seed=0))
        assert response.status_code == 413, response.text
        assert "needs 12288 bytes while it waits for inference, over IMAGE_MEMORY_BYTES=10000" in response.text
        assert client.app.state.service.decoders.memory.used == 0
    finally:
        client.__exit__(None, None, None)


def test_decodes_in_flight_never_reserve_more_than_the_budget_and_the_rest_wait_for_a_retry(
    classifier_path, monkeypatch
):
    from service.memory import MemoryBudget

    budget = 22 * 300 * 300 * 2 + 1000  # two 300x300 images' worth, not three
    highest = []
    reserve = MemoryBudget.try_reserve

    def watched(self, nbytes):
        granted = reserve(self, nbytes)
        highest.append(self.used)
        return granted

    monkeypatch.setattr(MemoryBudget, "try_reserve", watched)
    client = started(classifier_path, image_memory_bytes=budget, decode_workers=3)
    try:
        decoders = client.app.state.service.decoders
        held = client.portal.call(lambda: _reserve(decoders.memory, budget - 22 * 300 * 300 + 1))  # one slot short
        assert held
        busy = classify(client, noisy_png(300, 300, seed=0))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        assert "memory budget" in busy.json()["detail"] and busy.json()["request_id"]
        decoders.memory.release(budget - 22 * 300 * 300 + 1)

        uploads = [noisy_png(300, 300, seed=seed) for seed in range(6)]
        with ThreadPoolExecutor(6) as pool:
            statuses = sorted(
                response.status_code for response in pool.map(lambda data: classify(client, data), uploads)
            )
        assert set(statuses) <= {200, 503} and 200 in statuses, statuses
        assert max(highest) <= budget and decoders.memory.used == 0
    finally:
        client.__exit__(None, None, None)


async def _reserve(memory, nbytes: int) -> bool:
    return memory.try_reserve(nbytes)


def test_a_client_leaving_mid_upload_costs_no_traceback_and_is_counted_as_499(live_server, classifier_path, caplog):
    app = create_app(Settings(classifier_checkpoint=classifier_path, detector_checkpoint=None, optimize=False))
    url = live_server(app)
    host, port = url.removeprefix("http://").split(":")
    data = small_png()
    for _ in range(3):  # the body is declared whole and sent in half
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(
                f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data[: len(data) // 2]
            )
    deadline = time.monotonic() + GUARD_S
    while metric_of(url, 'resdet_http_requests_total{method="POST",route="/classify",status="499"}') < 3:
        assert time.monotonic() < deadline, httpx.get(f"{url}/metrics").text[-2000:]
        time.sleep(0.02)
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text[-2000:]


def metric_of(url: str, line_start: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0
