"""service/ray_serve.py on a loopback Ray cluster: the Serve application answers through Serve's HTTP
proxy what the plain service (create_app, same settings) answers, and stopping it leaves no process."""

import socket
from pathlib import Path

import pytest
from ray_fixtures import descendants, require_ray, still_running

require_ray()

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from ray import serve  # noqa: E402

from detection.data import generate_synthetic  # noqa: E402
from detection.ray_local import LOOPBACK, local_cluster  # noqa: E402
from service import Settings, create_app  # noqa: E402
from service.ray_serve import build_app, deployment  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
# fp32 and one thread in both, so the two answers are the same arithmetic (BF16=auto may pick bf16)
SETTINGS = {"detector_checkpoint": str(DEMO), "classifier_checkpoint": None, "device": "cpu", "bf16": False,
            "torch_threads": 1, "max_batch": 4}  # fmt: skip
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class ServeOnCluster:
    """The Serve application on a one-node loopback cluster; close() stops Serve and the cluster (once)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.cluster_context = local_cluster(num_cpus=2)
        self.cluster = self.cluster_context.__enter__()
        self.closed = False
        try:
            serve.start(http_options={"host": LOOPBACK, "port": self.port})
            serve.run(deployment(SETTINGS), name="resdet", route_prefix="/")
            self.client = httpx.Client(base_url=self.url, timeout=60)
            wait_ready(self.client)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            serve.shutdown()
        finally:
            self.cluster_context.__exit__(None, None, None)


def wait_ready(client) -> None:
    """/readyz through the proxy turns 200 once the replica's lifespan has loaded and warmed the model."""
    import time

    deadline = time.monotonic() + 120  # a deadlock guard (replica start on a loaded 2-core machine), not a goal
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the Serve replica never became ready"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served():
    application = ServeOnCluster()
    try:
        yield application
    finally:
        application.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[tuple[str, bytes]]:
    """Generated shapes (what the demo detector was trained on) of two sizes, and bytes that are no image."""
    root = tmp_path_factory.mktemp("shapes")
    generate_synthetic(root, num_train=3, num_val=0, image_size=96, seed=5)
    files = sorted((root / "coco" / "train").glob("*.jpg"))
    shown = [(file.name, file.read_bytes()) for file in files]
    return shown + [("broken.jpg", b"\xff\xd8 not really a jpeg")]


def test_every_node_and_the_proxy_are_on_loopback(served):
    addresses = served.cluster.node_addresses()
    assert addresses and set(addresses) == {LOOPBACK}
    assert served.client.get("/healthz").status_code == 200  # reached at 127.0.0.1:<port>


def test_serve_answers_what_the_plain_service_answers(served, images):
    with TestClient(create_app(Settings(**SETTINGS))) as plain:
        wait_ready(plain)
        detected = 0
        for name, data in images:
            files = {"file": (name, data, "image/jpeg")}
            expected, got = plain.post("/detect", files=files), served.client.post("/detect", files=files)
            assert got.status_code == expected.status_code, (name, got.text)
            if expected.status_code != 200:
                assert got.json()["detail"] == expected.json()["detail"]
                continue
            expected, got = expected.json(), got.json()
            assert got["image"] == expected["image"] and got["model"] == expected["model"]
            assert len(got["detections"]) == len(expected["detections"]), name
            for ours, theirs in zip(got["detections"], expected["detections"]):
                assert (ours["label"], ours["name"]) == (theirs["label"], theirs["name"])
                assert max(abs(a - b) for a, b in zip(ours["box"], theirs["box"])) <= 0.05
                assert abs(ours["score"] - theirs["score"]) <= 1e-4
            detected += len(expected["detections"])
        assert detected > 0, "no detections to compare: the images no longer suit the demo detector"
        batch = [("files", (name, data, "image/jpeg")) for name, data in images[:2]]
        expected, got = plain.post("/detect/batch", files=batch), served.client.post("/detect/batch", files=batch)
        assert got.status_code == expected.status_code == 200
        strip = [[(d["label"], d["box"]) for d in r["detections"]] for r in expected.json()]
        assert [[(d["label"], d["box"]) for d in r["detections"]] for r in got.json()] == strip


def test_the_config_file_builder_refuses_what_the_service_would_not_run():
    with pytest.raises(ValueError, match="no such setting"):
        build_app({"settings": {"max_bacth": 8}})
    with pytest.raises(ValueError, match="args.settings only"):
        build_app({"max_batch": 8})
    assert build_app({"settings": {"max_batch": 8}}) is not None


def test_stopping_serve_and_the_cluster_leaves_no_process(served):
    # Ray's processes only: an earlier test module's decoding pool leaves multiprocessing's fork server and resource
    # tracker under pytest, which live as long as the test process
    started = {pid: command for pid, command in descendants().items() if b"from multiprocessing." not in command}
    titles = b"\n".join(started.values())
    assert b"raylet" in titles and b"ServeReplica" in titles, titles[:2000]  # what is checked below exists
    served.close()
    assert still_running(started, within_s=30) == {}
