"""What depends on the transport, against a real uvicorn on loopback: chunked bodies, slow clients, early 401/413.

Starlette's TestClient hands a body over in one piece, so a limit that counts only the last chunk, or a
key check that runs after the body is read, passes there. Here the client sends one chunk each time the
app asks for more (`BodyProbe` sees the app's reads), so each chunk reaches the app as its own message,
and what the app read before answering is counted, without any timing.
"""

import http.client
import json
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import Settings, create_app
from service.settings import DEMO_MODEL_DIR

DEMO_CLASSIFIER = DEMO_MODEL_DIR / "demo_classifier.safetensors"
LIMIT = 50_000
CHUNK = 8192
BOUNDARY = "resdetboundary"
PROBE_HEADER = "x-body-probe"
GUARD_S = 60  # only a deadlock guard: every wait below ends on an event


def random_png(size: tuple[int, int], seed: int) -> bytes:
    from helpers import image_bytes  # one generator of test images for the service tests

    return image_bytes(size=size, seed=seed)


def multipart(data: bytes, *, filename: str = "big.png") -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class BodyProbe:
    """Wraps the app under test: counts the body reads the app asks for, the bytes it got, and when it answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.changed = threading.Condition()
        self.reads_asked = 0
        self.body_bytes = 0
        self.responded = False

    def reset(self) -> None:
        with self.changed:
            self.reads_asked, self.body_bytes, self.responded = 0, 0, False

    def _update(self, **changes: object) -> None:
        with self.changed:
            for name, value in changes.items():
                setattr(self, name, value)
            self.changed.notify_all()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only the paced request is watched (it carries PROBE_HEADER): other clients' requests pass through.
        if scope["type"] != "http" or (PROBE_HEADER.encode(), b"1") not in scope["headers"]:
            await self.app(scope, receive, send)
            return

        async def counted_receive() -> Message:
            self._update(reads_asked=self.reads_asked + 1)
            message = await receive()
            if message["type"] == "http.request":
                self._update(body_bytes=self.body_bytes + len(message.get("body", b"")))
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._update(responded=True)
            await send(message)

        await self.app(scope, counted_receive, watched_send)

    def app_wants_read(self, number: int) -> bool:
        """Block until the app asks for body read `number` (True) or has answered without it (False)."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.reads_asked >= number or self.responded, GUARD_S)
            return self.reads_asked >= number and not self.responded


def send_paced(
    url: str, path: str, chunks: Iterable[bytes], probe: BodyProbe, *, headers: dict[str, str],
    chunked: bool = True, pause_after: int | None = None, paused: threading.Event | None = None,
    resume: threading.Event | None = None,
) -> tuple[int, dict]:  # fmt: skip
    """POST the chunks one per read the app asks for; stop sending as soon as the app answers.

    With `pause_after`, sets `paused` after that many chunks and waits for `resume`: a client stalled
    in the middle of its upload.
    """
    probe.reset()
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=GUARD_S)
    try:
        connection.putrequest("POST", path)
        connection.putheader(PROBE_HEADER, "1")
        for name, value in headers.items():
            connection.putheader(name, value)
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        finished = True
        for index, chunk in enumerate(chunks):
            if pause_after is not None and index == pause_after:
                paused.set()
                assert resume.wait(GUARD_S)
            if not probe.app_wants_read(index + 1):
                finished = False
                break
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if finished and chunked:
            connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def pieces(body: bytes, size: int = CHUNK) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


@pytest.fixture(scope="module")
def big_upload() -> bytes:
    body = multipart(random_png((200, 200), seed=3))  # random pixels: a PNG of about 120 kB
    assert len(body) > 2 * LIMIT
    return body


def probed_app(**overrides) -> BodyProbe:
    options = {"classifier_checkpoint": DEMO_CLASSIFIER, "detector_checkpoint": None, "max_upload_bytes": LIMIT}
    return BodyProbe(create_app(Settings(**(options | overrides))))


FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_a_slowly_chunked_body_over_the_limit_is_cut_off_with_413(live_server, big_upload):
    probe = probed_app()
    url = live_server(probe)
    status, body = send_paced(url, "/classify", pieces(big_upload), probe, headers=FORM)
    assert status == 413, body
    assert "MAX_UPLOAD_BYTES=50000" in body["detail"]
    # Cut at the first chunk over the limit: the rest of the upload was never read.
    assert LIMIT < probe.body_bytes <= LIMIT + CHUNK
    assert probe.reads_asked < len(pieces(big_upload))


def test_a_chunked_body_under_the_limit_is_served(live_server):
    probe = probed_app()
    url = live_server(probe)
    upload = multipart(random_png((60, 50), seed=4))
    assert len(upload) < LIMIT
    status, body = send_paced(url, "/classify", pieces(upload, size=2048), probe, headers=FORM)
    assert status == 200, body
    assert body["image"] == {"width": 60, "height": 50} and probe.body_bytes == len(upload)


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_read(live_server, big_upload):
    probe = probed_app()
    url = live_server(probe)
    headers = {**FORM, "Content-Length": str(len(big_upload))}
    status, body = send_paced(url, "/classify", pieces(big_upload), probe, headers=headers, chunked=False)
    assert status == 413 and "MAX_UPLOAD_BYTES=50000" in body["detail"]
    assert probe.reads_asked == 0 and probe.body_bytes == 0


@pytest.mark.parametrize("path", ["/classify", "/classify/batch"])
def test_a_stranger_gets_401_before_the_body_is_read(live_server, big_upload, path):
    probe = probed_app(api_key="s3cret", max_upload_bytes=10 * LIMIT)
    url = live_server(probe)
    status, body = send_paced(url, path, pieces(big_upload), probe, headers=FORM)
    assert status == 401 and "API key" in body["detail"]
    assert probe.reads_asked == 0 and probe.body_bytes == 0


def test_with_the_key_the_same_upload_is_read_and_served(live_server):
    probe = probed_app(api_key="s3cret")
    url = live_server(probe)
    upload = multipart(random_png((40, 30), seed=5))
    headers = {**FORM, "X-API-Key": "s3cret"}
    status, body = send_paced(url, "/classify", pieces(upload, size=1024), probe, headers=headers)
    assert status == 200, body
    assert probe.body_bytes == len(upload) and probe.reads_asked >= len(pieces(upload, size=1024))


def test_a_client_stalled_mid_upload_does_not_hold_up_others(live_server, big_upload):
    probe = probed_app(max_upload_bytes=10 * LIMIT)
    url = live_server(probe)
    paused, resume, outcome = threading.Event(), threading.Event(), {}

    def stalled_client() -> None:
        outcome["stalled"] = send_paced(url, "/classify", pieces(big_upload), probe, headers=FORM, pause_after=3,
                                        paused=paused, resume=resume)  # fmt: skip

    thread = threading.Thread(target=stalled_client)
    thread.start()
    try:
        assert paused.wait(GUARD_S)
        other = httpx.post(f"{url}/classify", files={"file": ("small.png", random_png((32, 32), seed=6), "image/png")},
                           timeout=GUARD_S)  # fmt: skip
        assert other.status_code == 200, other.text
        assert not probe.responded  # the stalled upload is still open, half read
    finally:
        resume.set()
        thread.join()
    status, body = outcome["stalled"]
    assert status == 200 and body["image"] == {"width": 200, "height": 200}
